import json
import sqlite3

import pytest

from app.search.filters import FilterError, compile_filter

ROWS = [
    {"lang": "en", "year": 1999, "tag": "a"},
    {"lang": "en", "year": 2005, "tag": "b"},
    {"lang": "fr", "year": 2005, "tag": "c", "nested": {"x": 1}},
    {"lang": "de", "year": 2020},
    {"lang": "en", "year": "2010"},  # a number stored as text (e.g. from CSV)
    {"lang": "en", "nested.x": 1, "v.w": {"$gt": 2}},  # dotted keys, as the HTTP API stores them
]


@pytest.fixture
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE documents (key INTEGER PRIMARY KEY, metadata TEXT)")
    conn.executemany("INSERT INTO documents VALUES (?, ?)", [(i, json.dumps(r)) for i, r in enumerate(ROWS)])
    return conn


def _keys(db: sqlite3.Connection, spec: dict) -> list[int]:
    where, params = compile_filter(spec)
    return [r[0] for r in db.execute(f"SELECT key FROM documents WHERE {where} ORDER BY key", params)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, [0, 1, 2, 3, 4, 5]),
        ({"lang": "en"}, [0, 1, 4, 5]),
        ({"lang": {"$in": ["fr", "de"]}}, [2, 3]),
        ({"year": {"$gte": 2000, "$lt": 2020}}, [1, 2]),
        ({"lang": "en", "year": {"$gt": 2000}}, [1]),
        ({"$and": [{"lang": {"$in": ["en", "fr"]}}, {"year": 2005}]}, [1, 2]),
        ({"nested.x": 1}, [2, 5]),  # b nested in a, or the key "a.b" itself
        ({"nested.x": {"$gte": 1, "$lt": 2}}, [2, 5]),
        ({"v.w": {"$gt": 2}}, []),  # a value that looks like a filter is only a value
        ({"tag": "zzz"}, []),
        ({"year": {"$gt": 1000}}, [0, 1, 2, 3]),  # text never matches a numeric range
        ({"year": "2010"}, [4]),
    ],
)
def test_filters_select_exactly_the_matching_rows(db: sqlite3.Connection, spec: dict, expected: list[int]) -> None:
    assert _keys(db, spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        {"lang": {"$regex": "e"}},
        {"$or": [{"lang": "en"}]},
        {"year": {"$gt": "2000"}},
        {"tag": {"$in": []}},
        {"tag": {"$in": [["nested"]]}},
        {'a "quoted" key': 1},  # a JSON path label cannot hold a '"'
        {"": 1},
        {"k" * 257: 1},
        {"lang": {"x": 1}},
        {"lang": ["list", "not", "allowed"]},
        {"$and": []},
    ],
)
def test_bad_filters_are_rejected(spec: dict) -> None:
    with pytest.raises(FilterError):
        compile_filter(spec)


def test_filters_take_exactly_the_64_bit_integers_the_api_stores(db: sqlite3.Connection) -> None:
    edges = [-(2**63), 2**63 - 1]
    db.executemany("INSERT INTO documents VALUES (?, ?)", [(10 + i, json.dumps({"n": n})) for i, n in enumerate(edges)])
    assert _keys(db, {"n": -(2**63)}) == [10]
    assert _keys(db, {"n": {"$in": edges}}) == [10, 11]
    assert _keys(db, {"n": {"$lte": -(2**63)}}) == [10]
    assert _keys(db, {"n": {"$gte": 2**63 - 1}}) == [11]
    for beyond in (2**63, -(2**63) - 1):
        with pytest.raises(FilterError, match="does not fit in a 64-bit integer"):
            compile_filter({"n": beyond})


# Keys of every kind the store takes: non-ASCII letters (stored escaped, "\u00e9"), spaces, SQL,
# path syntax, backslashes, control characters, dots (the key itself, or a path into an object).
ODD_KEYS = [
    "année",
    "日本語",
    "naïve café",
    "emoji 🎉",
    "my key",
    "'; DROP TABLE documents; --",
    "a[0]",
    "*",
    "a\\b",
    "tab\tkey",
    "nul\u0000key",
    " ",
    "ünï.cödé",
    "x" * 256,
    "a..b",
    ".lead",
    "trail.",
]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_every_key_the_store_takes_can_be_filtered_on(key: str) -> None:
    from app.search.store import encode_metadata

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE documents (key INTEGER PRIMARY KEY, metadata TEXT)")
    rows = [{key: "yes", "n": 5}, {key: "no"}, {"other": "yes"}]
    conn.executemany("INSERT INTO documents VALUES (?, ?)", [(i, encode_metadata(r)) for i, r in enumerate(rows)])
    assert _keys(conn, {key: "yes"}) == [0]
    assert _keys(conn, {key: {"$in": ["yes", "no"]}}) == [0, 1]
    assert _keys(conn, {key: "yes", "n": {"$gte": 5}}) == [0]
    assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 3  # and nothing else ran
