"""The keyword (BM25, SQLite FTS5) index of a document store: kept in the document's transaction,
built for older stores, user text never parsed as FTS5 syntax."""

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app.core.errors import KeywordSearchUnavailable
from app.search.store import Document, DocumentStore, keyword_expression
from tests.conftest import write_older_store

VECTOR = np.ones(4, np.float32)


def _store(tmp_path: Path) -> DocumentStore:
    store = DocumentStore(tmp_path / "documents.sqlite", 4)
    store.upsert(
        [
            Document("a", "Airflow over a wing at supersonic speeds", {"year": 1960}, VECTOR),
            Document("b", "Boundary layer flows and heat transfer", {"year": 1970}, VECTOR),
            Document("c", None, {}, VECTOR),  # a vector without text: not in the keyword index
            Document("d", "Heat transfer in a boundary layer with suction", {"year": 1980}, VECTOR),
        ]
    )
    return store


def _ids(store: DocumentStore, pairs: list[tuple[int, float]]) -> list[str]:
    docs = store.by_keys([k for k, _ in pairs])
    return [docs[k].id for k, _ in pairs]


def test_bm25_ranks_matching_words_and_stems(tmp_path: Path) -> None:
    store = _store(tmp_path)
    found = store.keyword_search("boundary layer suction", 10)
    assert _ids(store, found)[0] == "d" and set(_ids(store, found)) == {"b", "d"}
    assert found[0][1] > found[1][1] > 0  # higher is better
    assert _ids(store, store.keyword_search("flow", 10)) == ["b"]  # porter: "flows" matches "flow"
    assert store.keyword_search("unrelated zebra", 10) == []
    filtered = store.keyword_search("heat transfer", 10, "json_extract(metadata, '$.year') >= ?", [1975])
    assert _ids(store, filtered) == ["d"]


def test_keyword_index_follows_upserts_and_deletes_in_the_same_transaction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.upsert([Document("b", "Rocket nozzles", {}, VECTOR)])
    assert _ids(store, store.keyword_search("flows", 10)) == []
    assert _ids(store, store.keyword_search("nozzle", 10)) == ["b"]
    store.delete(["b", "d"])
    assert store.keyword_search("nozzle heat", 10) == []
    with pytest.raises(sqlite3.IntegrityError):  # a failed write leaves no keyword row behind
        store._db.execute("BEGIN")
        store._db.execute("INSERT INTO documents (id, text, vector) VALUES ('x', 'orphan words', x'00')")
        store._db.execute("INSERT INTO documents (id, text, vector) VALUES ('x', 'again', x'00')")
    store._db.execute("ROLLBACK")
    assert store.keyword_search("orphan", 10) == []
    assert store._db.execute("INSERT INTO documents_fts (documents_fts) VALUES ('integrity-check')").fetchall() == []
    store.close()
    reopened = DocumentStore(tmp_path / "documents.sqlite", 4)
    assert _ids(reopened, reopened.keyword_search("airflow", 10)) == ["a"]


@pytest.mark.parametrize(
    "query",
    ['"', "'", 'x" OR 1=1; --', "NEAR(a b)", "a AND OR NOT", "col:value", "^start", "pre*", "(((", "a+b-c", "_", "\\"],
)
def test_user_text_is_never_fts_syntax(tmp_path: Path, query: str) -> None:
    store = _store(tmp_path)
    store.keyword_search(query, 10)  # no sqlite3.OperationalError
    expression = keyword_expression(query)
    assert expression is None or all(part.startswith('"') and part.endswith('"') for part in expression.split(" OR "))


def test_operator_words_are_plain_words(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.upsert([Document("e", "NOT a single AND here", {}, VECTOR)])
    assert _ids(store, store.keyword_search("NOT", 10)) == ["e"]
    assert set(_ids(store, store.keyword_search("AND", 10))) == {"e", "b"}  # "and" is a word of b too
    assert keyword_expression("  ...  ") is None and store.keyword_search("!!", 10) == []


def test_older_store_gets_its_keyword_index_built(tmp_path: Path) -> None:
    path = tmp_path / "documents.sqlite"
    write_older_store(path, VECTOR.tobytes(), "legacy turbine blades")
    read_only = DocumentStore(path, 4, read_only=True)
    with pytest.raises(KeywordSearchUnavailable):
        read_only.keyword_search("turbine", 10)
    read_only.close()
    store = DocumentStore(path, 4)
    assert _ids(store, store.keyword_search("turbines", 10)) == ["old"] and store.has_text()


def test_has_text(tmp_path: Path) -> None:
    store = DocumentStore(tmp_path / "documents.sqlite", 4)
    assert not store.has_text()
    store.upsert([Document("v", None, {}, VECTOR)])
    assert not store.has_text()
    store.upsert([Document("t", "words", {}, VECTOR)])
    assert store.has_text()
