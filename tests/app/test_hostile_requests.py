"""Requests a hostile or careless user sends (issue 12): each gets a JSON 4xx, none crashes the
process, poisons a collection, or makes a later request fail."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.search.collection import CollectionConfig
from app.search.store import Document
from tests.conftest import LocalClient, live_server, settings_for, wait_for_build

DIM = 384


@pytest.fixture
def client(default_models_dir: Path, tmp_path: Path) -> TestClient:
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as test_client:
        yield test_client


def _json_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


def _raw_json(body: object) -> dict:
    """Request kwargs sending `body` as ASCII JSON: lone surrogates travel as \\uXXXX escapes, as a
    hostile client sends them (an encoder of real UTF-8 could not)."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


def _vec(seed: int) -> list[float]:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32).tolist()


# --- 1, 7: index specs that FAISS aborts on or rejects --------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        *("HNSW0", "HNSW1", "IVF10,PQ7", "IVF1,PQ999x99", "IVF0,Flat", "HNSW9999"),
        *("IVF\u0663,Flat", "HNSW\uff11\uff16"),  # digits of other scripts (Arabic-Indic 3, full-width 16)
        *("IVF10_HNSW1,Flat", "IVF10_HNSW,SQ8", "IVF10_HNSW300,SQ8", "IVF10_IVF4,Flat"),  # graphs over centroids too
    ],
)
def test_unbuildable_index_specs_are_refused_and_leave_nothing(client: TestClient, tmp_path: Path, spec: str) -> None:
    _json_error(client.post("/indexes", json={"name": "x", "index": spec}), 422, "invalid_index_spec")
    assert not (tmp_path / "indexes" / "x").exists()
    assert client.post("/indexes", json={"name": "x"}).status_code == 201
    _json_error(client.post("/indexes/x/optimize", json={"index": spec}), 422, "invalid_index_spec")
    client.put("/indexes/x/documents", json={"documents": [{"id": "a", "vector": _vec(0)}]})
    assert client.post("/indexes/x/search", json={"vector": _vec(0), "top_k": 1}).json()["hits"][0]["id"] == "a"


def test_numbers_with_leading_zeros_are_stored_in_canonical_form(client: TestClient) -> None:
    """`IVF004,Flat` builds what `IVF4,Flat` builds and is recorded as that: the spec a collection
    reports is the one its published pattern allows."""
    assert client.post("/indexes", json={"name": "z", "index": "HNSW016"}).status_code == 201
    assert client.get("/indexes/z").json()["index_spec"] == "HNSW16"
    docs = [{"id": str(i), "vector": _vec(i)} for i in range(20)]
    client.put("/indexes/z/documents", json={"documents": docs})
    assert client.post("/indexes/z/optimize", json={"index": "IVF004,SQ8"}).status_code == 202
    info = wait_for_build(client, "z")
    assert info["index_type"] == "IVF4,SQ8" and info["last_build"]["spec"] == "IVF4,SQ8", info


def test_optimize_with_too_little_data_to_train_is_refused_up_front(client: TestClient) -> None:
    client.post("/indexes", json={"name": "small"})
    docs = [{"id": str(i), "vector": _vec(i)} for i in range(20)]
    client.put("/indexes/small/documents", json={"documents": docs})
    error = _json_error(client.post("/indexes/small/optimize", json={"index": "IVF64,Flat"}), 422)
    assert "needs at least 64 vectors" in error["message"]


def test_a_collection_that_cannot_be_opened_does_not_stop_start_up(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path)
    with LocalClient(create_app(settings)) as c:
        c.post("/indexes", json={"name": "good"})
        c.put("/indexes/good/documents", json={"documents": [{"id": "g", "vector": _vec(1)}]})
        c.post("/indexes", json={"name": "poisoned"})
        c.put("/indexes/poisoned/documents", json={"documents": [{"id": "p", "vector": _vec(2)}]})
    # What an older version accepted and then aborted on at every start: a crash loop.
    folder = tmp_path / "indexes" / "poisoned"
    config = CollectionConfig.load(folder)
    config.index = "HNSW0"
    config.save(folder)
    for stale in folder.glob("index*"):
        stale.unlink()  # no snapshot: the index would be rebuilt with the bad spec
    with LocalClient(create_app(settings)) as c:
        ready = c.get("/ready").json()
        assert ready["status"] == "ready" and "poisoned" in ready["collections_failed"]
        listing = c.get("/indexes").json()
        assert [i["name"] for i in listing["indexes"]] == ["good"]
        assert listing["failed"][0]["name"] == "poisoned" and "HNSW0" in listing["failed"][0]["error"]
        assert c.post("/indexes/good/search", json={"vector": _vec(1), "top_k": 1}).json()["hits"][0]["id"] == "g"
        _json_error(c.post("/indexes/poisoned/search", json={"vector": _vec(2)}), 404, "index_not_found")
        _json_error(c.post("/indexes", json={"name": "poisoned"}), 409, "index_exists")
        assert c.delete("/indexes/poisoned").status_code == 204
        assert c.post("/indexes", json={"name": "poisoned"}).status_code == 201


# --- 3: metadata that SQLite's JSON functions or a response encoder cannot take -------------------
@pytest.mark.parametrize(
    "raw_metadata",
    ['{"x": NaN}', '{"x": Infinity}', '{"x": [1, -Infinity]}', '{"x": "\\udfff"}', '{"\\udfff": 1}'],
)
def test_non_finite_or_non_unicode_metadata_is_refused(client: TestClient, raw_metadata: str) -> None:
    client.post("/indexes", json={"name": "m"})
    body = '{"documents": [{"id": "a", "text": "hello", "metadata": ' + raw_metadata + "}]}"
    response = client.put("/indexes/m/documents", content=body, headers={"content-type": "application/json"})
    message = _json_error(response, 422)["message"]
    assert client.get("/indexes/m").json()["size"] == 0
    if raw_metadata.startswith('{"x"'):  # one sentence naming the key, not one per branch of the union
        assert message.startswith("documents.0.metadata.x: a metadata value is") and ";" not in message, message


def test_a_nested_object_as_metadata_value_gets_one_clear_message(client: TestClient) -> None:
    client.post("/indexes", json={"name": "m"})
    doc = {"id": "a", "text": "hello", "metadata": {"ok": [1, "a", True], "nested": {"y": 1}}}
    message = _json_error(client.put("/indexes/m/documents", json={"documents": [doc]}), 422)["message"]
    assert message == (
        "documents.0.metadata.nested: a metadata value is a string (valid Unicode), a finite number, a boolean, "
        "null, or a list of those"
    )


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, [1, 2**70]])
def test_an_integer_beyond_64_bits_is_refused_not_stored_as_a_nearby_float(client: TestClient, value: object) -> None:
    client.post("/indexes", json={"name": "m"})
    doc = {"id": "a", "text": "hello", "metadata": {"n": value}}
    message = _json_error(client.put("/indexes/m/documents", json={"documents": [doc]}), 422)["message"]
    assert message == (
        "documents.0.metadata.n: an integer metadata value must fit in 64 bits; send a larger one as a string"
    )
    assert client.get("/indexes/m").json()["size"] == 0
    edge = {"id": "b", "text": "hello", "metadata": {"n": 2**63 - 1, "m": -(2**63)}}
    assert client.put("/indexes/m/documents", json={"documents": [edge]}).status_code == 200
    assert client.get("/indexes/m/documents/b").json()["metadata"] == {"n": 2**63 - 1, "m": -(2**63)}
    # and a filter finds it by either bound
    for key, bound in (("n", 2**63 - 1), ("m", -(2**63))):
        found = client.post("/indexes/m/search", json={"query": "hello", "filter": {key: bound}})
        assert [hit["id"] for hit in found.json()["hits"]] == ["b"], found.text


def test_rows_stored_before_the_checks_still_read_and_filter(client: TestClient, tmp_path: Path) -> None:
    client.post("/indexes", json={"name": "legacy"})
    docs = [{"id": "ok", "vector": _vec(3), "metadata": {"lang": "en"}}, {"id": "bad", "vector": _vec(4)}]
    client.put("/indexes/legacy/documents", json={"documents": docs})
    db = sqlite3.connect(tmp_path / "indexes" / "legacy" / "documents.sqlite")
    db.execute("""UPDATE documents SET metadata = '{"x": NaN, "s": "\\udfff"}' WHERE id = 'bad'""")
    db.commit()
    db.close()
    hits = client.post("/indexes/legacy/search", json={"vector": _vec(4), "top_k": 2})
    assert hits.status_code == 200 and {h["id"] for h in hits.json()["hits"]} == {"ok", "bad"}
    bad = client.get("/indexes/legacy/documents/bad")
    assert bad.status_code == 200 and bad.json()["metadata"] == {"x": None, "s": "\ufffd"}
    filtered = client.post("/indexes/legacy/search", json={"vector": _vec(4), "filter": {"lang": "en"}})
    assert filtered.status_code == 200 and [h["id"] for h in filtered.json()["hits"]] == ["ok"]


# --- 5: lone surrogates in any text input --------------------------------------------------------
def test_lone_surrogates_in_text_inputs_get_422_and_the_connection_survives(default_models_dir: Path, tmp_path) -> None:
    with live_server(settings_for(default_models_dir, data_dir=tmp_path)) as base, httpx.Client(base_url=base) as http:
        http.post("/indexes", json={"name": "s"})
        cases = [
            ("/v1/embeddings", {"input": "\ud800"}),
            ("/v1/embeddings", {"input": ["fine", "bad \udfff"]}),
            ("/embed", {"inputs": "\ud800"}),
            ("/indexes/s/search", {"query": "\ud800"}),
            ("/indexes/s/search", {"vector": _vec(0), "filter": {"k": "\ud800"}}),
            ("/v1/rerank", {"query": "\ud800", "documents": ["a"]}),
            ("/v1/rerank", {"query": "q", "documents": ["\ud800"]}),
            # model names are quoted back in "not found" errors: refused before any lookup
            ("/v1/embeddings", {"input": "x", "model": "\ud800"}),
            ("/embed", {"inputs": "x", "model": "a\udfffb"}),
            ("/v1/rerank", {"query": "q", "documents": ["a"], "model": "\ud800"}),
            ("/v1/classify", {"images": ["aGk="], "labels": ["a"], "model": "\ud800"}),
            ("/indexes", {"name": "t", "model": "\ud800"}),
            ("/indexes", {"name": "t", "rescore": {"model": "\ud800"}}),
            ("/indexes/s/search", {"query": "x", "rerank": {"model": "\ud800"}}),
        ]
        for path, body in cases:
            _json_error(http.post(path, **_raw_json(body)), 422)
        for doc in ({"id": "a", "text": "\ud800"}, {"id": "\ud800", "text": "x"}):
            _json_error(http.put("/indexes/s/documents", **_raw_json({"documents": [doc]})), 422)
        assert http.post("/v1/embeddings", json={"input": "still serving"}).status_code == 200


# --- 6: filters beyond the bounds ----------------------------------------------------------------
def _nested(depth: int) -> dict:
    spec: dict = {"a": 1}
    for _ in range(depth):
        spec = {"$and": [spec]}
    return spec


@pytest.mark.parametrize(
    "raw_filter",
    [
        '{"n": {"$gte": 10000000000000000000000000000000000000000}}',
        '{"n": 100000000000000000000000}',
        '{"n": {"$in": [1, 100000000000000000000000]}}',
        json.dumps(_nested(100)),
        json.dumps({"$and": [{"a": i} for i in range(5000)]}),
        json.dumps({f"k{i}": i for i in range(20_000)}),
    ],
    ids=["int-range", "int-eq", "int-in", "deep", "wide-and", "many-keys"],
)
def test_filters_beyond_bounds_get_422(client: TestClient, raw_filter: str) -> None:
    client.post("/indexes", json={"name": "f"})
    client.put("/indexes/f/documents", json={"documents": [{"id": "a", "vector": _vec(0), "metadata": {"n": 1}}]})
    body = '{"vector": ' + json.dumps(_vec(0)) + ', "filter": ' + raw_filter + "}"
    response = client.post("/indexes/f/search", content=body, headers={"content-type": "application/json"})
    _json_error(response, 422, "invalid_filter")


def test_filter_values_match_their_json_type(client: TestClient) -> None:
    client.post("/indexes", json={"name": "t"})
    docs = [
        {"id": "bool", "vector": _vec(0), "metadata": {"flag": True}},
        {"id": "int", "vector": _vec(1), "metadata": {"flag": 1}},
        {"id": "str", "vector": _vec(2), "metadata": {"flag": "1"}},
    ]
    assert client.put("/indexes/t/documents", json={"documents": docs}).status_code == 200

    def ids(flag: object) -> set[str]:
        body = {"vector": _vec(0), "top_k": 3, "filter": {"flag": flag}}
        return {h["id"] for h in client.post("/indexes/t/search", json=body).json()["hits"]}

    assert ids(True) == {"bool"} and ids(1) == {"int"} and ids("1") == {"str"}
    assert ids({"$in": [True, "1"]}) == {"bool", "str"}


# --- 8: deleting a collection others are using ---------------------------------------------------
def test_deleting_a_collection_under_load_gives_404s_not_500s(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path)
    with live_server(settings) as base:
        statuses: list[int] = []
        stop = threading.Event()

        def hammer(kind: str) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    if kind == "write":
                        r = http.put("/indexes/busy/documents", json={"documents": [{"id": str(i), "vector": _vec(i)}]})
                    else:
                        r = http.post("/indexes/busy/search", json={"vector": _vec(i), "filter": {"x": {"$gte": 0}}})
                    statuses.append(r.status_code)

        for round_ in range(3):
            httpx.post(f"{base}/indexes", json={"name": "busy"})
            threads = [threading.Thread(target=hammer, args=(k,)) for k in ("write", "write", "read", "read")]
            stop.clear()
            for t in threads:
                t.start()
            threading.Event().wait(0.4)
            assert httpx.delete(f"{base}/indexes/busy").status_code == 204, round_
            threading.Event().wait(0.2)
            stop.set()
            for t in threads:
                t.join()
        assert statuses and set(statuses) <= {200, 404}, sorted(set(statuses))
        assert httpx.get(f"{base}/health").status_code == 200


def test_a_write_that_outlives_its_collection_is_404_and_never_lands_in_a_new_one_of_that_name(
    tmp_path: Path,
) -> None:
    """A request holding the collection it started on (its embedding still running) writes after a
    DELETE and a re-create of the same name: 404 'was deleted', not a 409 about a lock the new
    collection holds, and nothing of it in the new collection."""
    from app.core.errors import CollectionNotFound
    from app.search.manager import CollectionManager
    from app.search.store import Document

    manager = CollectionManager(tmp_path, 1 << 30)
    try:
        old = manager.create("again", "m", DIM, "cosine", "Flat")
        manager.delete("again")
        new = manager.create("again", "m", DIM, "cosine", "Flat")
        for write in (
            lambda: old.upsert([Document("late", None, {}, np.asarray(_vec(1), dtype=np.float32))]),
            lambda: old.delete(["late"]),
        ):
            with pytest.raises(CollectionNotFound, match="was deleted"):
                write()
        assert new.store.count() == 0 and new.writable
    finally:
        manager.close()


def test_deleting_a_collection_a_build_is_writing_is_refused_until_the_build_ends(tmp_path: Path) -> None:
    """A server that opened a collection while a build held its writer lock (and a broken one the
    build is writing) must not remove the files from under the build: 409 naming the holder."""
    from app.core.errors import CollectionLocked
    from app.search.lock import CollectionLock
    from app.search.manager import CollectionManager

    first = CollectionManager(tmp_path, 1 << 30)
    first.create("built", "m", DIM, "cosine", "Flat")
    first.close()
    root = first.root
    (root / "broken").mkdir()
    (root / "broken" / "collection.json").write_text("{not json")
    builds = {name: CollectionLock(root / name, "builder") for name in ("built", "broken")}
    assert all(lock.try_acquire() for lock in builds.values())
    server = CollectionManager(tmp_path, 1 << 30)
    server.open_all()
    try:
        assert "broken" in server.failed and not server.get("built").writable
        for name, lock in builds.items():
            with pytest.raises(CollectionLocked, match=r"a builder \(pid \d+\)"):
                server.delete(name)
            assert (root / name / "collection.json").exists()
            lock.release()  # the build ends
            server.delete(name)
            assert not (root / name).exists()
    finally:
        server.close()


def test_a_collection_being_deleted_is_neither_rediscovered_nor_recreated_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DELETE closes and removes the files outside the manager's lock: meanwhile its files are still
    on disk, and must not be opened again as a collection a build created, nor block a create with
    'on disk (not loaded)'; once they are gone the name is free."""
    import shutil

    from app.core.errors import CollectionExists, CollectionNotFound
    from app.search import manager as manager_module
    from app.search.manager import CollectionManager

    manager = CollectionManager(tmp_path, 1 << 30)
    manager.open_all()
    manager.create("doomed", "m", DIM, "cosine", "Flat")
    removing, finish = threading.Event(), threading.Event()
    real_rmtree = shutil.rmtree

    def slow_rmtree(path, ignore_errors=False):  # type: ignore[no-untyped-def]
        removing.set()
        assert finish.wait(30)
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(manager_module.shutil, "rmtree", slow_rmtree)
    deleting = threading.Thread(target=manager.delete, args=("doomed",))
    deleting.start()
    try:
        assert removing.wait(30) and (manager.root / "doomed" / "collection.json").is_file()
        with pytest.raises(CollectionNotFound):
            manager.get("doomed")
        manager.discover()
        assert "doomed" not in manager.collections and "doomed" not in manager.failed
        with pytest.raises(CollectionExists, match="is being deleted"):
            manager.create("doomed", "m", DIM, "cosine", "Flat")
    finally:
        finish.set()
        deleting.join()
    monkeypatch.setattr(manager_module.shutil, "rmtree", real_rmtree)
    assert manager.create("doomed", "m", DIM, "cosine", "Flat").store.count() == 0
    manager.close()


def test_listing_indexes_while_one_is_deleted_is_not_a_500(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /indexes describes each collection while create, delete and discovery change the
    manager's dict from worker threads: here a delete lands in the middle of the listing."""
    from app.search.collection import Collection

    for name in ("a", "b", "c"):
        assert client.post("/indexes", json={"name": name}).status_code == 201
    manager = client.app.state.collections  # type: ignore[attr-defined]
    real_describe = Collection.describe

    def describe_while_deleting(self):  # type: ignore[no-untyped-def]
        manager.collections.pop("c", None)  # what a DELETE in a worker thread does meanwhile
        return real_describe(self)

    monkeypatch.setattr(Collection, "describe", describe_while_deleting)
    listing = client.get("/indexes")
    assert listing.status_code == 200, listing.text
    assert {"a", "b"} <= {i["name"] for i in listing.json()["indexes"]}


# --- 9, 10: oversized inputs and bodies ----------------------------------------------------------
def test_an_input_over_the_character_cap_is_413_before_tokenising(client: TestClient) -> None:
    error = _json_error(client.post("/v1/embeddings", json={"input": ["ok", "x" * 200_000]}), 413, "input_too_long")
    assert "input 1 has 200000 characters" in error["message"]
    _json_error(client.post("/v1/rerank", json={"query": "q", "documents": ["y" * 200_000]}), 413)


def test_a_chunked_body_over_the_cap_gets_the_same_413(default_models_dir: Path, tmp_path: Path) -> None:
    settings = settings_for(default_models_dir, data_dir=tmp_path, max_payload_bytes=1_000_000)

    def chunks():  # no Content-Length: sent with Transfer-Encoding: chunked
        yield b'{"input": ["'
        for _ in range(10_000):
            yield b"x" * 1000
        yield b'"]}'

    with live_server(settings) as base, httpx.Client(base_url=base, timeout=30) as http:
        response = http.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
        _json_error(response, 413, "payload_too_large")
        sized = http.post("/v1/embeddings", content=b"x" * 2_000_000, headers={"content-type": "application/json"})
        _json_error(sized, 413, "payload_too_large")
        assert http.post("/v1/embeddings", json={"input": "after"}).status_code == 200


# --- 11: strict types, one policy for unknown fields ---------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/embeddings", {"input": "a", "dimensions": "12"}),
        ("/v1/embeddings", {"input": "a", "dimensions": True}),
        ("/v1/embeddings", {"input": "a", "truncate": 0}),
        ("/v1/embeddings", {"input": "a", "surprise": 1}),
        ("/embed", {"inputs": "a", "normalize": "yes"}),
        ("/embed", {"inputs": "a", "surprise": 1}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "top_n": "1"}),
        ("/v1/rerank", {"query": "q", "documents": ["a"], "surprise": 1}),
        ("/indexes/s/search", {"vector": ["1"] * DIM}),
        ("/indexes/s/search", {"query": "q", "top_k": "5"}),
        ("/indexes/s/search", {"query": "q", "surprise": 1}),
    ],
)
def test_loose_types_and_unknown_fields_get_422(client: TestClient, path: str, body: dict) -> None:
    client.post("/indexes", json={"name": "s"})
    _json_error(client.post(path, json=body), 422, "invalid_request")


def test_a_bad_image_item_gets_errors_about_its_own_fields(client: TestClient) -> None:
    body = {"input": ["fine", {"image": "aGk=", "crop": True}]}
    message = _json_error(client.post("/v1/embeddings", json=body), 422, "invalid_request")["message"]
    assert message == "input.1.image.crop: Extra inputs are not permitted"


def test_known_compatibility_fields_are_accepted(client: TestClient) -> None:
    body = {"input": "a", "user": "someone", "encoding_format": "float", "dimensions": 12}
    assert client.post("/v1/embeddings", json=body).status_code == 200
    assert client.post("/embed", json={"inputs": "a", "truncation_direction": "Right"}).status_code == 200


# --- 12: ids with "/" ---------------------------------------------------------------------------
def test_ids_with_a_slash_are_refused_and_old_ones_stay_addressable(client: TestClient) -> None:
    client.post("/indexes", json={"name": "ids"})
    error = _json_error(client.put("/indexes/ids/documents", json={"documents": [{"id": "a/b", "text": "x"}]}), 422)
    assert "'/'" in error["message"]
    # written by an older version, which accepted it
    collection = client.app.state.collections.get("ids")
    collection.upsert([Document("a/b", "legacy", {}, np.asarray(_vec(5), dtype=np.float32))])
    assert client.get("/indexes/ids/documents/a/b").json()["text"] == "legacy"
    assert client.delete("/indexes/ids/documents/a/b").json() == {"deleted": ["a/b"], "not_found": []}
    _json_error(client.get("/indexes/ids/documents/a/b"), 404, "document_not_found")
