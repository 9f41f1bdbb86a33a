"""Ids by key from the store's (key, id) index: a search returning ids alone reads no table row;
older stores get the index when opened for writing, read-only replicas of them read without it."""

from pathlib import Path

import numpy as np

from app.search.store import Document, DocumentStore
from tests.conftest import write_older_store

VECTOR = np.ones(4, np.float32)


def test_ids_alone_come_from_the_key_id_index(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "documents.sqlite", 4)
    _, keys = store.upsert([Document(name, f"text {name}", {"n": i}, VECTOR) for i, name in enumerate("abcd")])
    removed, again = store.upsert([Document("b", "b again", {}, VECTOR)])  # a new key for b
    store.delete(["c"])
    wanted = [*keys, *again, 10_000]
    ids_alone = store.by_keys(wanted, fields=())
    expected = {keys[0]: "a", keys[3]: "d", again[0]: "b"}  # b's old key and c are gone, 10,000 never was
    assert ids_alone == {key: Document(doc_id, None, {}) for key, doc_id in expected.items()}
    assert {k: d.id for k, d in store.by_keys(wanted).items()} == {k: d.id for k, d in ids_alone.items()}
    assert removed == [keys[1]]
    plan = " ".join(
        str(row)
        for row in store._db.execute(
            "EXPLAIN QUERY PLAN SELECT key, id FROM documents INDEXED BY documents_key_id WHERE key IN (?, ?)", [1, 2]
        )
    )
    assert "COVERING INDEX documents_key_id" in plan  # the rows themselves are not read


def test_an_older_store_gets_the_index_and_a_read_only_replica_reads_without_it(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite"
    write_older_store(path, VECTOR.tobytes(), "legacy")
    replica = DocumentStore(path, 4, read_only=True)
    assert replica.by_keys([1], fields=()) == {1: Document("old", None, {})}
    replica.close()
    store = DocumentStore(path, 4)
    assert store._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'documents_key_id'").fetchone() == (1,)
    assert store.by_keys([1], fields=()) == {1: Document("old", None, {})}


def test_reads_by_more_keys_than_one_statement_binds(tmp_path: Path) -> None:
    """Every read by a list of keys or ids spans several `IN (...)` statements past 500 values."""
    store = DocumentStore(tmp_path / "documents.sqlite", 4)
    vectors = np.arange(1_203 * 4, dtype=np.float32).reshape(1_203, 4)
    docs = [
        Document(f"d{i}", f"text {i}", {}, vectors[i], modality="image" if i % 2 else "text", rescore_vector=vectors[i])
        for i in range(1_203)
    ]
    _, keys = store.upsert(docs)
    wanted = [*keys, 99_999]  # 1,204 values: three statements, one key never stored
    assert {k: d.id for k, d in store.by_keys(wanted).items()} == {k: f"d{i}" for i, k in enumerate(keys)}
    assert {k: d.id for k, d in store.by_keys(wanted, fields=()).items()} == {k: f"d{i}" for i, k in enumerate(keys)}
    assert set(store.vectors_for(wanted)) == set(keys)
    assert set(store.image_vectors_for(wanted)) == set(keys[1::2])
    present, found = store.live_vectors(np.array(wanted, dtype=np.int64))
    assert present.tolist() == keys and np.array_equal(found, vectors)
    rescore = store.rescore_vectors([f"d{i}" for i in range(1_203)] + ["missing"])
    assert len(rescore) == 1_203 and np.array_equal(rescore["d1202"], vectors[1_202])
