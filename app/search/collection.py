"""A collection: a SQLite document store (durable) + a FAISS index (in memory, snapshotted).

Write path: one SQLite transaction (WAL, synchronous=FULL) -> apply to FAISS -> acknowledge.
Restart path: load the last snapshot, then replay the ops logged after it; with no usable
snapshot, rebuild from the store. Either way every acknowledged write is there and no deleted
document comes back. Rebuilds (optimise) run on a copy and swap in, so reads never wait for them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import CollectionLocked, CollectionNotFound, DuplicateIds, InvalidIndexSpec, OptimizeRunning
from app.core.memory import map_large_blocks_directly, release_free_memory
from app.search import index_choice
from app.search.filters import FilterLimits, compile_filter
from app.search.lock import CollectionLock
from app.search.store import Change, Document, DocumentStore, StoreSnapshot, storage_full_as_domain_error
from app.search.vector_index import (
    BuildReport,
    SearchParams,
    VectorIndex,
    exact_top_k,
    fsync_path,
    single_query_ms,
    training_points_needed,
    tune,
    validate_spec,
)

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Recall is measured on up to this many documents held out of the new index while it is tuned (at
# most a tenth of the collection), then added. Stored vectors as their own queries overstate recall
# (a graph search lands on the very node); held-out ones track queries near the data
# (benchmarks/results/recall_estimate.md). 1,000, as `auto`'s trial (index_choice.TRIAL_QUERIES): the
# one-sided bound's margin shrinks ~2.2x from 200's, so the tuned breadth is less often a step too wide.
RECALL_SAMPLE = 1_000
LATENCY_QUERIES = 100  # held-out queries the built index's p50_ms is timed on
TRUTH_BATCH = 2_000  # stored vectors per chunk of the exact top-10 pass (1,000 x 2,000 scores: ~8 MB)
DEFAULT_RECALL_TARGET = 0.95  # recall@10, reached with 95% confidence on the held-out sample
# An IVF index's lists were trained on the vectors it held then; once the collection has grown past
# this factor, new vectors crowd lists fitted to other data, and it re-trains in the background.
DEFAULT_RETRAIN_GROWTH = 2.0
# A snapshot rewrites the whole index, so at a fixed interval of writes a bulk load's snapshot I/O
# grows with the square of the collection (1M vectors over HTTP at 20,000 writes apart: 50 rewrites,
# ~25x the final index). Writes between snapshots are also at least this fraction of the vectors the
# index holds: the rewrites then grow geometrically, ~5x the final index in all, and a restart
# replays at most this fraction of the collection from the op log.
DEFAULT_SNAPSHOT_GROWTH = 0.25
# An unfiltered search is done on the event loop (no thread hop) up to this many stored vectors
# compared (~0.3 ms at 384-d) and this many hits read from the store.
INLINE_SEARCH_MAX_COMPARED = 20_000
INLINE_SEARCH_MAX_K = 100
FILTER_CACHE_ENTRIES = 64  # distinct filters whose matching keys are kept (until the next write)
FILTER_CACHE_KEYS = 4_000_000  # and at most this many keys in all (32 MB)
# Vectors an IVF/PQ index trains on: TRAINING_PER_LIST per list (or PQ centroid), within
# [TRAINING_SAMPLE_MIN, TRAINING_SAMPLE]. k-means wants tens of points per centroid; more costs
# memory at build time (the sample, and IVF-SQ's residuals of it) for little recall (tuning sets nprobe).
TRAINING_SAMPLE, TRAINING_SAMPLE_MIN, TRAINING_PER_LIST = 200_000, 50_000, 25
SAMPLE_READ_CHUNK = 10_000  # keys read per step while sampling (15 MB of 384-d vectors)


class _StoreBusy(Exception):
    """A read that would wait for a writer: the search goes to a worker thread instead."""


def _scored_keys(keys: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
    """(key, score) pairs of one query's FAISS result, without its -1 padding (fewer hits than k)."""
    return [(int(k), float(s)) for k, s in zip(keys, scores, strict=True) if k >= 0]


@dataclass
class CollectionConfig:
    name: str
    model: str
    dim: int
    metric: str = "cosine"
    index: str = "auto"
    # Image collections: keep a small JPEG of each image in the store (off: only its reference).
    thumbnails: bool = False
    # Second-stage vectors: {"model": reranker or text model, "dim": its size, "weight": the first
    # stage's weight in the fused score, "fingerprint": that model version's (absent: not
    # recorded)}; None: none are kept.
    rescore: dict[str, Any] | None = None
    # Manifest.fingerprint of the model version that embedded the vectors (None: not recorded, as
    # for collections created before it was).
    model_fingerprint: str | None = None
    created_at: float = field(default_factory=time.time)
    last_build: dict[str, Any] | None = None

    def model_changed(self, fingerprint: str | None) -> str | None:
        """Why its vectors do not match the version of its model with `fingerprint` (another one
        embedded them), or None (they match, or either fingerprint is unknown)."""
        return _version_change(self.name, self.model, "vectors", self.model_fingerprint, fingerprint)

    def rescore_changed(self, fingerprint: str | None) -> str | None:
        """Why its second-stage vectors do not match the version of its rescore model with
        `fingerprint`, or None (they match, it keeps none, or either fingerprint is unknown)."""
        if not self.rescore:
            return None
        recorded = self.rescore.get("fingerprint")
        return _version_change(self.name, self.rescore["model"], "second-stage vectors", recorded, fingerprint)

    def save(self, folder: Path) -> None:
        """Atomic and durable (temp file, fsync, rename, fsync the folder): a crash or a full disk
        leaves the previous collection.json whole, never an empty one a restart could not read."""
        tmp = folder / "collection.json.tmp"
        with storage_full_as_domain_error(f"saving index {self.name!r}"):
            try:
                tmp.write_text(json.dumps(asdict(self), indent=2))
                fsync_path(tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            tmp.replace(folder / "collection.json")
            fsync_path(folder)

    @classmethod
    def load(cls, folder: Path) -> CollectionConfig:
        return cls(**json.loads((folder / "collection.json").read_text()))


def _version_change(index: str, model: str, vectors: str, recorded: str | None, current: str | None) -> str | None:
    """The one wording of "these vectors came from another version of that model" (the builder and
    the server each add what to do about it)."""
    if None in (recorded, current) or recorded == current:
        return None
    return (
        f"index {index!r} holds {vectors} of another version of model {model!r} (fingerprint {recorded}; "
        f"the model's is now {current})"
    )


@dataclass
class Hit:
    id: str
    score: float
    document: str | None = None
    metadata: dict[str, Any] | None = None
    vector: list[float] | None = None
    image: str | None = None
    thumbnail: bytes | None = None
    key: int = -1  # the internal key (not returned to clients)


class Collection:
    def __init__(
        self,
        folder: Path,
        config: CollectionConfig,
        memory_budget_bytes: int,
        snapshot_every_ops: int = 20_000,
        read_only: bool = False,
        filter_limits: FilterLimits | None = None,
        lock: CollectionLock | None = None,
        recall_target: float = DEFAULT_RECALL_TARGET,
        retrain_growth: float = DEFAULT_RETRAIN_GROWTH,
        *,
        snapshot_growth: float = DEFAULT_SNAPSHOT_GROWTH,
    ) -> None:
        """`lock`: the collection's writer lock (None on a read-only replica). If another process
        holds it, the collection opens for reads and writes answer CollectionLocked until it is free.
        A snapshot is taken after `snapshot_every_ops` writes and at least `snapshot_growth` times the
        index's vectors (0: the fixed interval alone)."""
        # A spec this version cannot build (e.g. written by an older one that accepted HNSW0, on
        # which FAISS aborts the process) stops here with an error, never inside FAISS.
        validate_spec(config.index, config.dim)
        self.folder = folder
        self.config = config
        self.filter_limits = filter_limits or FilterLimits()
        self.last_error: str | None = None  # the last background optimise's failure, if it failed
        self.memory_budget_bytes = memory_budget_bytes
        self.recall_target = recall_target
        self.retrain_growth = retrain_growth
        self.retraining: threading.Thread | None = None
        self.snapshot_every_ops = snapshot_every_ops
        self.snapshot_growth = snapshot_growth
        self.read_only = read_only
        self.store = DocumentStore(folder / "documents.sqlite", config.dim, read_only)
        self._write_lock = threading.Lock()  # one writer at a time (store + index stay in step)
        self._index_lock = threading.RLock()  # guards the FAISS object against concurrent mutation
        self._optimizing = threading.Lock()
        self._ops_since_snapshot = 0
        self._catch_up_from: int | None = None  # an optimise replays ops after this: keep them
        self._deferred_from: int | None = None  # defer_indexing: the op the index stopped at
        self._write_version = 0  # bumped by every write (before it is acknowledged)
        self._filter_cache: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._filter_cache_version = 0
        self._filter_cache_lock = threading.Lock()
        self.lock = lock
        if lock is not None:
            lock.try_acquire()
        self.index = self._serving(self._open_index())
        self._keep_ids_if_sole_writer()

    # --- opening -----------------------------------------------------------------------------
    @property
    def snapshot_path(self) -> Path:
        return self.folder / "index.faiss"

    def _initial_spec(self) -> str:
        spec = self.config.index
        if spec == "auto":
            return (self.config.last_build or {}).get("spec", "Flat")
        return spec

    def _serving(self, index: VectorIndex) -> VectorIndex:
        """`index`, reading the float vectors a binary index rescores with from this store."""
        index.rescore_from = self.store.live_vectors
        return index

    def _open_index(self) -> VectorIndex:
        loaded = VectorIndex.load(self.snapshot_path, self.config.dim, self.config.metric)
        if loaded is None:
            with self.store.snapshot() as snap:
                return self._build_from_store(self._initial_spec(), snap)
        index, applied = loaded
        changes = self.store.changes_since(applied)
        self._catch_up(index, changes)
        if index.is_graph:
            index.tombstones = set(map(int, index.ids())) - set(map(int, self._live_keys()))
        self._ops_since_snapshot = len(changes)
        log.info("collection %s: snapshot + %d replayed ops, %d vectors", self.config.name, len(changes), index.live)
        return index

    def _catch_up(self, index: VectorIndex, changes: list[Change]) -> None:
        """Apply the ops logged after the state `index` holds. Keys are never reused (the store's
        AUTOINCREMENT), so the net effect is order-free: a key added and deleted again after that
        state is neither added nor removed (removing a key a graph index never held would count it
        as a tombstone); a deleted older key is removed; a surviving new key is added."""
        added = {c.key for c in changes if c.kind == "add"}
        deleted = {c.key for c in changes if c.kind == "del"}
        index.remove(sorted(deleted - added))
        fresh = sorted(added - deleted)
        vectors = self.store.vectors_for(fresh)
        present = [k for k in fresh if k in vectors]
        if present:
            index.add(np.asarray(present, dtype=np.int64), np.stack([vectors[k] for k in present]))

    def _live_keys(self) -> np.ndarray:
        return self.store.keys_matching("1", [])

    def _build_from_store(
        self,
        spec: str,
        snap: StoreSnapshot,
        leave_out: np.ndarray | None = None,
        left_out_vectors: np.ndarray | None = None,
    ) -> VectorIndex:
        """An index of `spec` holding exactly the documents of `snap` (but `leave_out` keys, whose
        vectors `left_out_vectors` the caller adds back later). A spec that needs training data the
        collection does not have yet gives an exact (Flat) index until the next optimise."""
        index = self._trained_index(spec, snap)  # its training sample is freed before the index fills
        release_free_memory()
        if leave_out is None or not len(leave_out):
            index.fill(snap.iter_vectors)
        else:  # the left-out documents are added back after tuning: their lists are sized for them
            index.fill(lambda: _without(snap.iter_vectors(), leave_out), to_come=left_out_vectors)
        return index

    def _trained_index(self, spec: str, snap: StoreSnapshot) -> VectorIndex:
        """An empty index of `spec`, trained on a sample of `snap` if it needs training."""
        index = VectorIndex(self.config.dim, self.config.metric, spec)
        if index.index.is_trained:
            return index
        needed = max(1, training_points_needed(spec))
        size = min(TRAINING_SAMPLE, max(TRAINING_SAMPLE_MIN, TRAINING_PER_LIST * needed))
        _, sample = self._training_sample(snap, size)
        if len(sample) < needed:
            log.warning(
                "%s: %s needs %d vectors to train, %d stored: exact (Flat) until then",
                self.config.name,
                spec,
                needed,
                len(sample),
            )
            return VectorIndex(self.config.dim, self.config.metric, "Flat")
        index.train(sample)
        return index

    @staticmethod
    def _training_sample(snap: StoreSnapshot, size: int = TRAINING_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
        """Up to `size` live (keys (m,), vectors (m, dim)) drawn uniformly from the whole collection,
        in key order. Not the first `size`: collections are often written in an order (by date,
        source, topic), and IVF centroids trained on the oldest slice would leave later documents
        in lists that do not fit them (recall at a given nprobe falls, so tuning raises nprobe), as
        would `auto`'s trials on that slice. Read by key in chunks into one array: a 1M collection
        is not loaded whole to train on a fifth of it."""
        keys = snap.keys()
        if len(keys) > size:
            keys = np.sort(np.random.default_rng(0).choice(keys, size=size, replace=False))
        sample = np.empty((len(keys), snap.dim), np.float32)  # filled in place: no second copy
        for start in range(0, len(keys), SAMPLE_READ_CHUNK):
            chunk = keys[start : start + SAMPLE_READ_CHUNK]
            sample[start : start + len(chunk)] = snap.vectors(chunk)
        return keys, sample

    # --- writes ------------------------------------------------------------------------------
    def _check_write_lock(self) -> None:
        """Called under the write lock before any write. A lock another process held at open time
        may be free now: take it, and reload from disk what that process wrote meanwhile."""
        self.store.check_open()  # deleted while this write waited: a collection of that name may exist now
        if self.read_only or self.lock is None or self.lock.held:
            return
        try:  # the folder (lock file, config) can vanish: deleted meanwhile, there is nothing to write to
            if not self.lock.try_acquire():
                raise self.lock.refusal(self.config.name, "writes resume when it finishes")
            self.config = CollectionConfig.load(self.folder)
        except FileNotFoundError:
            self.lock.release()  # a no-op when it was not taken
            raise CollectionNotFound(f"index '{self.config.name}' was deleted") from None
        with self._index_lock:
            self.index = self._serving(self._open_index())
        self._keep_ids_if_sole_writer()
        self._write_version += 1  # what the other process wrote: cached filter results are stale

    def _keep_ids_if_sole_writer(self) -> None:
        """Ids by key in memory (searches returning ids alone skip SQLite) where no other process
        can change the store: this one holds the writer lock, or it is an immutable replica."""
        if self.writable or self.read_only:
            self.store.keep_ids_in_memory()

    @property
    def writable(self) -> bool:
        return not self.read_only and (self.lock is None or self.lock.held)

    def reload_if_released(self) -> None:
        """Opened while another process (a build) held the writer lock: if it is free now, take it
        and reload what that process wrote, so reads see the finished build rather than the part
        there was at open time. Never waits: a write in progress means it is being done."""
        if self.writable or self.read_only or self.lock is None or not self._write_lock.acquire(blocking=False):
            return
        try:
            self._check_write_lock()
        except CollectionLocked:
            pass  # still being written: reads go on serving what was there
        finally:
            self._write_lock.release()

    def upsert(self, docs: list[Document]) -> int:
        if len({d.id for d in docs}) != len(docs):  # the index would keep a key the store replaced
            raise DuplicateIds("duplicate ids in one write")
        with self._write_lock:
            self._check_write_lock()
            removed, added = self.store.upsert(docs)  # durable from here on
            self._write_version += 1
            if self._deferred_from is None:
                with self._index_lock:
                    self.index.remove(removed)
                    self.index.add(np.asarray(added, dtype=np.int64), np.stack([d.vector for d in docs]))
            self._after_write(len(removed) + len(added))
        return len(added)

    def delete(self, ids: list[str]) -> list[str]:
        with self._write_lock:
            self._check_write_lock()
            found, keys = self.store.delete(ids)
            self._write_version += 1
            if self._deferred_from is None:
                with self._index_lock:
                    self.index.remove(keys)
            self._after_write(len(keys))
        return found

    def defer_indexing(self) -> None:
        """Bulk loading (the batch builder): from here on writes go to the store only (durable and
        in the op log, as always) and the in-memory index is left alone, so a million-vector build
        holds no growing exact index beside the one `optimize` builds from the store at the end,
        and writes no snapshots meanwhile. `optimize` (which builds from the store) or
        `resume_indexing` (which replays the ops into the index) ends it; a crash meanwhile loses
        nothing (a restart replays the op log after the last snapshot)."""
        with self._write_lock:
            if self._deferred_from is None:
                self._deferred_from = self.store.last_op()

    def resume_indexing(self) -> None:
        """End `defer_indexing`: the index catches up with every write since."""
        with self._write_lock:
            if self._deferred_from is not None:
                with self._index_lock:
                    self._catch_up(self.index, self.store.changes_since(self._deferred_from))
                self._deferred_from = None

    def _after_write(self, ops: int) -> None:
        if self._deferred_from is not None:
            return  # no snapshot of an index that lacks these writes; no retrain either
        self._ops_since_snapshot += ops
        if self._ops_since_snapshot >= max(self.snapshot_every_ops, self.snapshot_growth * self.index.live):
            self._snapshot_after_write()
        self._retrain_if_grown()

    def _snapshot_after_write(self) -> None:
        """A snapshot only shortens the next start (the op log holds every write): the write that
        triggers it is already durable, so its failure (a full disk) must not turn that write into an
        error. Logged; tried again after another `snapshot_every_ops` ops, not on every write."""
        try:
            self.snapshot()
        except Exception:  # any failure: faiss reports a failed write as RuntimeError
            log.exception("%s: snapshot failed; the op log keeps every write", self.config.name)
            self._ops_since_snapshot = 0

    def _retrain_if_grown(self) -> None:
        """Start a background rebuild (reads go on, no write is lost: see `optimize`) when an IVF
        index holds more than `retrain_growth` times the vectors it was trained on."""
        trained_on = (self.config.last_build or {}).get("n") or 0
        if not self.index.is_ivf or not trained_on or self.index.live <= self.retrain_growth * trained_on:
            return
        if self._optimizing.locked() or (self.retraining is not None and self.retraining.is_alive()):
            return
        log.info(
            "%s: %d vectors, trained on %d: re-training in the background",
            self.config.name,
            self.index.live,
            trained_on,
        )
        self.retraining = threading.Thread(target=self._retrain, name=f"retrain-{self.config.name}", daemon=True)
        self.retraining.start()

    def _retrain(self) -> None:
        try:
            self.optimize()
        except Exception as exc:  # recorded as last_build_error by optimize; a retrain is best-effort
            log.warning("%s: background re-train failed: %r", self.config.name, exc)

    def snapshot(self) -> None:
        """Persist the index; the ops it contains can then be pruned from the log."""
        if self._deferred_from is not None:
            return  # the index lacks the deferred writes: a snapshot would claim them and prune their ops
        with self._index_lock:
            applied = self.store.last_op()
            self.index.save(self.snapshot_path, applied)
        pinned = self._catch_up_from
        self.store.prune_ops(applied if pinned is None else min(applied, pinned))
        self._ops_since_snapshot = 0

    def snapshot_between_writes(self) -> None:
        """`snapshot`, taken between two writes (under the write lock) by a caller that is not a
        writer (the shutdown). Mid-write, the store has committed ops the index does not hold yet:
        a snapshot then would record them as applied and prune them, and a restart would never add
        those documents to the index."""
        with self._write_lock:
            self.snapshot()

    # --- reads -------------------------------------------------------------------------------
    def search(
        self,
        query: np.ndarray,  # (dim,)
        top_k: int,
        filter_spec: dict[str, Any] | None,
        include: set[str],
        params: SearchParams,
        modality: str | None = None,
    ) -> list[Hit]:
        """`modality` ("text" | "image"): only documents embedded from that kind of input."""
        return self.hits(self.dense_keys(query, top_k, filter_spec, params, modality), include)

    def _condition(self, filter_spec: dict[str, Any] | None, modality: str | None) -> tuple[str, list[Any]]:
        """The SQL condition documents must meet: the compiled filter and the modality."""
        where, sql_params = compile_filter(filter_spec, self.filter_limits)
        if modality:
            clause, clause_params = self.store.modality_clause(modality)
            where, sql_params = f"({where}) AND {clause}", [*sql_params, *clause_params]
        return where, sql_params

    def dense_keys(
        self,
        query: np.ndarray,  # (dim,)
        top_k: int,
        filter_spec: dict[str, Any] | None,
        params: SearchParams,
        modality: str | None = None,
    ) -> list[tuple[int, float]]:
        """(key, vector score) of the nearest `top_k` documents meeting the filter, best first."""
        allowed = None
        if filter_spec or modality:
            allowed = self._matching_keys(*self._condition(filter_spec, modality))
        with self._index_lock:
            scores, keys = self.index.search(query[None, :], top_k, allowed, params, self.store.live_vectors)
        return _scored_keys(keys[0], scores[0])

    def dense_keys_now(self, query: np.ndarray, top_k: int, params: SearchParams) -> list[tuple[int, float]] | None:
        """`dense_keys` of an unfiltered query done on the calling thread (the event loop) when it is
        cheap (at most INLINE_SEARCH_MAX_COMPARED stored vectors compared, INLINE_SEARCH_MAX_K hits) and
        no writer holds the index; None: run `search` on a worker thread. At 8 concurrent searches a
        thread hop costs more CPU than such a search itself (the GIL changing hands)."""
        compared = self.index.vectors_compared(params)
        if top_k > INLINE_SEARCH_MAX_K or compared is None or compared > INLINE_SEARCH_MAX_COMPARED:
            return None
        if not self._index_lock.acquire(blocking=False):
            return None
        try:
            scores, keys = self.index.search(query[None, :], top_k, None, params, self._rescore_vectors_now)
        except _StoreBusy:  # a binary index's rescoring found a writer holding the store
            return None
        finally:
            self._index_lock.release()
        return _scored_keys(keys[0], scores[0])

    def _rescore_vectors_now(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The store's vectors of `keys` for a binary index's rescoring, read without waiting."""
        found = self.store.live_vectors_now(keys)
        if found is None:
            raise _StoreBusy
        return found

    def _matching_keys(self, where: str, params: list[Any]) -> np.ndarray:
        """Keys meeting a compiled filter, cached per (filter, write version): evaluating it scans
        every row's JSON (~0.1 s at 100k documents), and the same filters (a tenant, a language)
        come again and again. Any write in this process empties the cache."""
        cache_key = (where, json.dumps(params))
        with self._filter_cache_lock:
            if self._filter_cache_version != self._write_version:
                self._filter_cache.clear()
                self._filter_cache_version = self._write_version
            cached = self._filter_cache.get(cache_key)
            if cached is not None:
                self._filter_cache.move_to_end(cache_key)
                return cached
            version = self._write_version
        keys = self.store.keys_matching(where, params)
        with self._filter_cache_lock:
            if version == self._write_version:  # no write since: still true
                self._filter_cache[cache_key] = keys
                while len(self._filter_cache) > FILTER_CACHE_ENTRIES or (
                    sum(len(v) for v in self._filter_cache.values()) > FILTER_CACHE_KEYS
                ):
                    self._filter_cache.popitem(last=False)
        return keys

    def keyword_keys(
        self, query: str, top_k: int, filter_spec: dict[str, Any] | None, modality: str | None = None
    ) -> list[tuple[int, float]]:
        """(key, BM25 score) of the best `top_k` documents by keyword meeting the filter, best first."""
        return self.store.keyword_search(query, top_k, *self._condition(filter_spec, modality))

    def hits(self, pairs: list[tuple[int, float]], include: set[str]) -> list[Hit]:
        """The documents of scored keys, in that order, with the fields `include` names; a key
        deleted since it was found is left out."""
        return self._hits(pairs, include, self.store.by_keys([k for k, _ in pairs], include))

    def hits_now(self, pairs: list[tuple[int, float]], include: set[str]) -> list[Hit] | None:
        """`hits` on the calling thread, or None at once when a writer holds the store."""
        docs = self.store.by_keys_now([k for k, _ in pairs], include)
        return None if docs is None else self._hits(pairs, include, docs)

    @staticmethod
    def _hits(pairs: list[tuple[int, float]], include: set[str], docs: dict[int, Document]) -> list[Hit]:
        hits = []
        for key, score in pairs:
            doc = docs.get(key)
            if doc is None:  # deleted between the index search and the fetch
                continue
            hits.append(
                Hit(
                    id=doc.id,
                    score=score,
                    document=doc.text if "document" in include else None,
                    metadata=doc.metadata if "metadata" in include else None,
                    vector=doc.vector.tolist() if doc.vector is not None else None,
                    image=doc.image if "image" in include else None,
                    thumbnail=doc.thumbnail if "thumbnail" in include else None,
                    key=key,
                )
            )
        return hits

    def dense_scores(self, query: np.ndarray, keys: list[int]) -> dict[int, float]:
        """The exact vector score of each stored key for `query` (dim,); keys deleted meanwhile are absent."""
        stored = self.store.vectors_for(keys)
        present = [k for k in keys if k in stored]
        if not present:
            return {}
        scores = self.index.exact_scores(query, np.stack([stored[k] for k in present]))
        return dict(zip(present, map(float, scores), strict=True))

    def describe(self) -> dict[str, Any]:
        with self._index_lock:
            index = self.index
            return {
                "name": self.config.name,
                "model": self.config.model,
                "dim": self.config.dim,
                "metric": self.config.metric,
                "thumbnails": self.config.thumbnails,
                "rescore": self.config.rescore,
                "model_fingerprint": self.config.model_fingerprint,
                "index_spec": self.config.index,
                "index_type": index.spec,
                "size": self.store.count(),
                "index_vectors": index.live,
                "memory_bytes": index.memory_bytes(),
                "search_defaults": asdict(index.defaults),
                "last_build": self.config.last_build,
                "last_build_error": self.last_error,
                "optimizing": self._optimizing.locked(),
            }

    # --- rebuild -----------------------------------------------------------------------------
    def check_buildable(self, spec: str) -> str:
        """`spec`, canonical, if it can be built for this collection's vectors and size now, else
        InvalidIndexSpec."""
        spec = validate_spec(spec, self.config.dim)
        if spec != "auto":
            needed, stored = training_points_needed(spec), self.store.count()
            if needed > stored:
                raise InvalidIndexSpec(f"{spec} needs at least {needed} vectors to train; the collection has {stored}")
        return spec

    def reserve_optimize(self) -> None:
        """Claim the collection's one optimise now, before the thread that runs it starts, so that a
        status read right after the request already shows it running (and a second one is refused);
        `optimize(..., reserved=True)` then runs in the claimed slot."""
        if not self._optimizing.acquire(blocking=False):
            raise OptimizeRunning("an optimise is already running for this collection")

    def optimize(self, spec: str | None = None, reserved: bool = False) -> BuildReport:
        """Build a new index (chosen by `auto` or given), measure recall@10 against exact search on
        a sample, tune its search parameters, then swap it in and catch up with writes made
        meanwhile. Reads keep using the old index throughout.

        Exactness under concurrent writes: the new index is built from one consistent read of the
        store at op position P (taken under the write lock, which also pins the op log from P on),
        then every op after P is replayed under the write lock before the swap: each document is in
        it exactly once, whatever the writers did meanwhile."""
        if not reserved:
            self.reserve_optimize()
        try:
            spec = self.check_buildable(self.config.index if spec is None else spec)
            with self._write_lock:
                self._check_write_lock()
        except BaseException:
            self._optimizing.release()
            raise
        try:
            report = self._rebuild(spec)
            self.last_error = None
            return report
        except Exception as exc:
            # Deleted while it built: the snapshot's reads may then fail on the removed files (SQLite
            # says "disk I/O error"), which is that deletion, not a failed build.
            self.store.check_open()
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._catch_up_from = None
            self._optimizing.release()

    def _rebuild(self, spec: str) -> BuildReport:
        start = time.perf_counter()
        map_large_blocks_directly()  # the build's chunks go back to the system when freed
        reading = ExitStack()
        with self._write_lock:
            snap = reading.enter_context(self.store.snapshot())
            self._catch_up_from = snap.last_op  # prune_ops keeps every op after it
            ops_at_build = self.store.ops_written()
        with reading:
            churn = self._write_churn(ops_at_build) if spec == "auto" else None
            chosen, candidates = self._choose_auto(snap, churn) if spec == "auto" else (spec, [])
            release_free_memory()  # the trials' samples and indexes: the build's peak is its own
            held_out = self._held_out_keys(snap) if chosen != "Flat" else np.empty(0, np.int64)
            held_vectors = snap.vectors(held_out)  # read once: sized for in the fill, queries, then added
            new_index = self._build_from_store(chosen, snap, held_out, held_vectors)
            report = self._measure_and_tune(new_index, snap, held_out, held_vectors)
            if len(held_out):
                new_index.add(held_out, held_vectors)
            report.candidates = [asdict(c) for c in candidates]
            report.ops_at_build, report.write_churn = ops_at_build, churn
        with self._write_lock:  # block writers only for the catch-up and the swap
            self._catch_up(new_index, self.store.changes_since(snap.last_op))
            with self._index_lock:
                self.index = self._serving(new_index)
            self._catch_up_from = None
            self._deferred_from = None  # built from the store: it holds every deferred write
            report.build_seconds = round(time.perf_counter() - start, 2)
            self.config.last_build = asdict(report)
            self.config.save(self.folder)
            self.snapshot()
        return report

    def _choose_auto(self, snap: StoreSnapshot, churn: float | None) -> tuple[str, list[index_choice.Candidate]]:
        """Flat while small; above that, the candidates tried on a sample (index_choice)."""
        n = snap.count()
        if n <= index_choice.FLAT_MAX:
            return "Flat", []
        sample_keys, sample = self._training_sample(snap, index_choice.SAMPLE)
        write_heavy = churn is not None and churn >= index_choice.WRITE_HEAVY_CHURN
        return index_choice.choose(
            sample,
            n,
            self.config.metric,
            self.memory_budget_bytes,
            self.recall_target,
            write_heavy,
            sample_keys,
            snap.live_vectors,
        )

    def _write_churn(self, ops_now: int) -> float | None:
        """Documents written (added or deleted) since the previous build, per document that build
        held; None before the first build (or one recorded without its op counter)."""
        previous = self.config.last_build or {}
        if "ops_at_build" not in previous or not previous.get("n"):
            return None
        return round((ops_now - previous["ops_at_build"]) / previous["n"], 3)

    @staticmethod
    def _held_out_keys(snap: StoreSnapshot) -> np.ndarray:
        """Up to RECALL_SAMPLE random live keys, at most a tenth of them (sorted)."""
        live = snap.keys()
        count = min(RECALL_SAMPLE, len(live) // 10)
        return np.sort(np.random.default_rng(0).choice(live, size=count, replace=False)) if count else live[:0]

    def _measure_and_tune(
        self, index: VectorIndex, snap: StoreSnapshot, held_out: np.ndarray, queries: np.ndarray
    ) -> BuildReport:
        """Recall@10 of `index` (built without the `held_out` documents) against exact search over
        the same documents, with the held-out documents' vectors `queries` (in `held_out`'s order) as
        queries, and the cheapest search parameters whose recall reaches the target with 95% confidence."""
        n = index.live + len(held_out)
        if index.spec == "Flat" or n == 0:
            return BuildReport(index.spec, n, 1.0 if n else None, 0)
        if not len(held_out):  # under 10 documents: nothing to measure on
            return BuildReport(index.spec, n, None, 0)
        # streamed over the store: no second copy of the vectors (1.5 GB at 1M x 384)
        # small chunks: this pass runs when the new index is whole, at the build's memory peak
        truth = exact_top_k(_without(snap.iter_vectors(TRUTH_BATCH), held_out), queries, self.config.metric)
        index.rescore_from = snap.live_vectors  # a binary index rescores as served, from the store
        try:
            tuned = tune(index, truth, queries, self.recall_target)
            p50_ms = single_query_ms(index, queries[:LATENCY_QUERIES], tuned.params)
        finally:
            index.rescore_from = None  # the snapshot closes after the build; the swap points it at the store
        defaults = {k: v for k, v in asdict(tuned.params).items() if v is not None}
        return BuildReport(
            index.spec,
            n,
            round(tuned.recall, 4),
            len(held_out),
            defaults,
            recall_lower_bound=round(tuned.lower_bound, 4),
            recall_target=self.recall_target,
            p50_ms=round(p50_ms, 4),
        )

    def close(self) -> None:
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def _without(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], left_out: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`chunks` of (keys, vectors) without the keys in `left_out`."""
    for keys, vectors in chunks:
        kept = ~np.isin(keys, left_out)
        yield keys[kept], vectors[kept]
