"""Ids by key in memory (`KeyIds`): what a search returning ids alone reads instead of SQLite, kept
in step with the store's writes, and only where no other process writes the store."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from app.search import key_ids
from app.search.collection import Collection, CollectionConfig
from app.search.key_ids import KeyIds
from app.search.lock import CollectionLock
from app.search.store import Document, DocumentStore

VECTOR = np.ones(4, np.float32)


def test_random_adds_and_removes_match_a_dict_through_repacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(key_ids, "REPACK_MIN", 7)  # many repacks in a short run
    rng = random.Random(0)
    ids = KeyIds((k, f"id-{k}") for k in range(1, 40))
    model = {k: f"id-{k}" for k in range(1, 40)}
    next_key = 40
    for step in range(3_000):
        if rng.random() < 0.55 or not model:
            batch = list(range(next_key, next_key + rng.randint(1, 5)))
            names = [f"é-{k}-{'x' * rng.randint(0, 9)}-日本" for k in batch]  # ids of any length, not ASCII
            ids.add(batch, names)
            model.update(zip(batch, names, strict=True))
            next_key += len(batch)
        else:
            gone = [*rng.sample(sorted(model), min(len(model), rng.randint(1, 4))), next_key + 100, -5]
            ids.remove(gone)
            for key in gone:
                model.pop(key, None)
        if step % 50 == 0:
            probe = rng.sample(range(-3, next_key + 3), 40)
            assert ids.get(probe) == {k: model[k] for k in probe if k in model}
            assert len(ids) == len(model)
    assert ids.get(sorted(model)) == model


def test_keys_out_of_order_and_an_empty_map() -> None:
    ids = KeyIds([(9, "nine"), (2, "two"), (5, "five")])
    assert ids.get([2, 5, 9, 3, 0, 100]) == {2: "two", 5: "five", 9: "nine"}
    empty = KeyIds()
    assert empty.get([1, 2]) == {} and len(empty) == 0
    empty.add([3], ["three"])
    assert empty.get([3]) == {3: "three"}


def test_a_map_whose_keys_spread_far_past_its_documents_is_sparse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each upsert of an existing id takes a new key: a few documents replaced many times span
    many slots, which the store then stops keeping in memory."""
    monkeypatch.setattr(key_ids, "REPACK_MIN", 10)
    ids = KeyIds((k, str(k)) for k in range(1, 101))
    assert not ids.sparse
    key = 101
    for _ in range(30):  # every document replaced again, its old key gone
        ids.remove(range(key - 100, key))
        ids.add(range(key, key + 100), map(str, range(100)))
        key += 100
    assert not ids.sparse  # the old keys leave from the front: the span stays ~100 slots
    ids.remove([k for k in range(key - 100, key) if k % 10])  # 90 of the 100 left: 10 slots per document
    assert ids.sparse


def test_the_store_answers_ids_from_memory_in_step_with_its_writes(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "documents.sqlite", 4)
    _, first = store.upsert([Document(f"d{i}", None, {}, VECTOR) for i in range(20)])
    store.keep_ids_in_memory()
    assert store._key_ids is not None
    _, replaced = store.upsert([Document("d3", None, {}, VECTOR), Document("new", None, {}, VECTOR)])
    store.delete(["d5", "missing"])
    with pytest.raises(UnicodeEncodeError):  # rolled back: the map must not take it either
        store.upsert([Document("d7", None, {}, VECTOR), Document("bad\ud800", None, {}, VECTOR)])
    wanted = [*first, *replaced, 9_999]
    from_memory = store.by_keys(wanted, fields=())
    in_memory = store._key_ids
    store._key_ids = None
    from_sqlite = store.by_keys(wanted, fields=())
    assert from_memory == from_sqlite
    assert {d.id for d in from_memory.values()} == {f"d{i}" for i in range(20) if i != 5} | {"new"}
    assert first[3] not in from_memory and first[7] in from_memory
    assert len(in_memory) == 20  # type: ignore[arg-type]


def test_a_collection_keeps_ids_in_memory_only_while_no_other_process_writes(tmp_path: Path) -> None:
    """Opened while a builder holds the writer lock, a collection reads ids from SQLite (the builder's
    commits would not reach a map); once it takes the lock back it reloads and keeps them in memory."""
    folder = tmp_path / "c"
    folder.mkdir()
    config = CollectionConfig("c", "m", 4)
    config.save(folder)
    builder_lock = CollectionLock(folder, "builder")
    assert builder_lock.try_acquire()
    builder = Collection(folder, config, 1 << 20, lock=builder_lock)
    assert builder.store._key_ids is not None  # the writer's own map
    builder.upsert([Document(f"a{i}", None, {}, np.eye(4, dtype=np.float32)[i % 4]) for i in range(8)])
    server = Collection(folder, config, 1 << 20, lock=CollectionLock(folder, "server"))
    assert not server.writable and server.store._key_ids is None
    builder.upsert([Document("late", None, {}, np.eye(4, dtype=np.float32)[0])])
    builder.delete(["a0"])
    hits = server.hits([(k, 1.0) for k in range(1, 12)], set())
    assert {h.id for h in hits} == {f"a{i}" for i in range(1, 8)} | {"late"}  # the builder's writes, as SQLite has them
    builder.close()
    server.reload_if_released()
    assert server.writable and server.store._key_ids is not None
    server.upsert([Document("after", None, {}, np.eye(4, dtype=np.float32)[1])])
    keys = server.store.keys_matching("1", []).tolist()
    assert {h.id for h in server.hits([(k, 1.0) for k in keys], set())} == {f"a{i}" for i in range(1, 8)} | {
        "late",
        "after",
    }
    server.close()


def test_a_read_only_replica_keeps_ids_in_memory(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    folder.mkdir()
    config = CollectionConfig("r", "m", 4)
    config.save(folder)
    writer = Collection(folder, config, 1 << 20)
    writer.upsert([Document(f"r{i}", None, {}, VECTOR) for i in range(5)])
    writer.close()
    replica = Collection(folder, config, 1 << 20, read_only=True)
    assert replica.store._key_ids is not None
    assert {h.id for h in replica.hits([(k, 1.0) for k in range(1, 6)], set())} == {f"r{i}" for i in range(5)}
    replica.close()
