"""Every stored document's id by its key, in memory, for searches that return ids alone.

Reading ten ids from SQLite's (key, id) index took ~80-100 us of a ~450 us search at 1M documents
in process (B-tree descents whose pages the FAISS scan has pushed out of the CPU caches); this map
answers in a few microseconds. The store keeps it in step with its own writes, so it is only valid
where this process is the collection's only writer (or the database cannot change).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# Repack once the keys added since the last pack plus the removed packed ones reach this many, or
# half the packed count if more: a repack costs O(n) once per O(n) writes.
REPACK_MIN = 50_000
# Keys are slots of an array from the smallest key to the largest. A store's keys are AUTOINCREMENT
# (a replaced document gets a new key), so the span grows with every upsert of an existing id; past
# this many slots per live document (plus REPACK_MIN) the map is `sparse` and not worth its memory.
MAX_SLOTS_PER_DOCUMENT = 4


class KeyIds:
    """key -> id for a set of documents that changes by `add` and `remove`.

    Packed part, over the keys from `base` to the largest packed one: a live flag per key (span,)
    and where each key's id (UTF-8) starts in one bytes buffer (span + 1,) int64, the last entry
    the buffer's end. About 9 bytes plus the id per key (~16 MB at 1M documents with 7-character
    ids, where a dict of str takes ~130 MB), and a lookup reads three places per key rather than
    binary-searching. Keys added since the pack sit in a dict until the next repack, which happens
    in memory (never reading the store) and drops the removed ids' bytes."""

    def __init__(self, rows: Iterable[tuple[int, str]] = ()) -> None:
        """`rows`: (key, id) pairs, ideally in key order."""
        self._base = 0
        self._live = np.zeros(0, bool)
        self._offsets = np.zeros(1, np.int64)
        self._blob = b""
        self._packed = 0  # live packed keys
        self._dead = 0  # packed keys removed since the pack
        self._recent: dict[int, str] = {}
        keys: list[int] = []
        encoded: list[bytes] = []
        for key, doc_id in rows:
            keys.append(key)
            encoded.append(doc_id.encode())
        self._pack(np.asarray(keys, dtype=np.int64), np.fromiter(map(len, encoded), np.int64, len(keys)), encoded)

    def __len__(self) -> int:
        return self._packed - self._dead + len(self._recent)

    @property
    def sparse(self) -> bool:
        """Whether the packed span holds more than MAX_SLOTS_PER_DOCUMENT slots per live key."""
        return len(self._live) > MAX_SLOTS_PER_DOCUMENT * len(self) + REPACK_MIN

    def add(self, keys: Iterable[int], ids: Iterable[str]) -> None:
        """Add new `keys` with their `ids` (same order)."""
        self._recent.update(zip(keys, ids, strict=True))
        self._repack_if_due()

    def remove(self, keys: Iterable[int]) -> None:
        """Remove `keys`; those not present are ignored."""
        live, span = self._live_view, len(self._live_view)
        for key in keys:
            if self._recent.pop(key, None) is not None:
                continue
            slot = key - self._base
            if 0 <= slot < span and live[slot]:
                live[slot] = False
                self._dead += 1
        self._repack_if_due()

    def get(self, keys: list[int]) -> dict[int, str]:
        """The ids of those `keys` present."""
        out: dict[int, str] = {}
        live, offsets, blob, base, recent = self._live_view, self._offsets_view, self._blob, self._base, self._recent
        span = len(live)
        for key in keys:
            slot = key - base
            if 0 <= slot < span and live[slot]:
                out[key] = blob[offsets[slot] : offsets[slot + 1]].decode()
            elif recent:
                doc_id = recent.get(key)
                if doc_id is not None:
                    out[key] = doc_id
        return out

    def _repack_if_due(self) -> None:
        if len(self._recent) + self._dead >= max(REPACK_MIN, self._packed // 2):
            self._repack()

    def _repack(self) -> None:
        """The live packed keys (their ids' bytes kept by one byte mask) and the recent ones, packed."""
        lengths = np.diff(self._offsets)
        slots = np.flatnonzero(self._live)
        blob = self._blob
        if self._dead:  # keep the bytes of live slots' ids
            blob = np.frombuffer(blob, np.uint8)[np.repeat(self._live, lengths)].tobytes()
        recent = sorted(self._recent.items())
        encoded = [doc_id.encode() for _, doc_id in recent]
        self._pack(
            np.concatenate([slots + self._base, np.fromiter((k for k, _ in recent), np.int64, len(recent))]),
            np.concatenate([lengths[slots], np.fromiter(map(len, encoded), np.int64, len(encoded))]),
            [blob, *encoded],
        )

    def _pack(self, keys: np.ndarray, lengths: np.ndarray, pieces: list[bytes]) -> None:
        """Pack `keys` (n,) whose ids are `lengths` (n,) bytes each, in that order in `pieces` joined."""
        blob = b"".join(pieces)
        if len(keys) > 1 and np.any(np.diff(keys) <= 0):  # new keys are newer (AUTOINCREMENT) as a rule
            order = np.argsort(keys, kind="stable")
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
            pairs = zip(starts[order].tolist(), lengths[order].tolist(), strict=True)
            blob = b"".join(blob[start : start + length] for start, length in pairs)
            keys, lengths = keys[order], lengths[order]
        self._base = int(keys[0]) if len(keys) else 0
        span = int(keys[-1]) - self._base + 1 if len(keys) else 0
        self._live = np.zeros(span, bool)
        self._live[keys - self._base] = True
        slot_lengths = np.zeros(span, np.int64)
        slot_lengths[keys - self._base] = lengths
        self._offsets = np.concatenate([np.zeros(1, np.int64), np.cumsum(slot_lengths)])
        self._blob = blob
        self._packed, self._dead, self._recent = len(keys), 0, {}
        # per-element reads through memoryviews give Python ints and bools, far cheaper than numpy scalars
        self._live_view, self._offsets_view = memoryview(self._live), memoryview(self._offsets)
