"""Collections, documents and search over HTTP, on the real default model."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import LocalClient, settings_for

DOCS = [
    ("d1", "The cat sat on the mat.", {"lang": "en", "year": 2001, "topic": "animals"}),
    ("d2", "Dogs are loyal companions.", {"lang": "en", "year": 2010, "topic": "animals"}),
    ("d3", "The stock market fell sharply today.", {"lang": "en", "year": 2015, "topic": "finance"}),
    ("d4", "Interest rates were raised by the central bank.", {"lang": "en", "year": 2020, "topic": "finance"}),
    ("d5", "Le chat dort sur le canapé.", {"lang": "fr", "year": 2018, "topic": "animals"}),
    ("d6", "A kitten is playing with a ball of yarn.", {"lang": "en", "year": 2022, "topic": "animals"}),
]


@pytest.fixture
def client(default_models_dir, tmp_path) -> TestClient:
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as test_client:
        yield test_client


def _fill(client: TestClient, name: str = "docs") -> None:
    assert client.post("/indexes", json={"name": name}).status_code == 201
    body = {"documents": [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]}
    response = client.put(f"/indexes/{name}/documents", json=body)
    assert response.status_code == 200 and response.json() == {"upserted": 6, "size": 6}


def test_create_upsert_search_get_delete(client: TestClient) -> None:
    _fill(client)
    info = client.get("/indexes/docs").json()
    assert info["size"] == 6 and info["model"] == "minilm-l6" and info["dim"] == 384 and info["index_type"] == "Flat"
    hits = client.post("/indexes/docs/search", json={"query": "a cat sleeping", "top_k": 3}).json()["hits"]
    assert hits[0]["id"] in {"d1", "d6", "d5"} and hits[0]["document"] and hits[0]["metadata"]["topic"] == "animals"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    doc = client.get("/indexes/docs/documents/d3").json()
    assert doc["text"].startswith("The stock market") and doc["vector"] is None
    assert client.delete("/indexes/docs/documents/d3").json() == {"deleted": ["d3"], "not_found": []}
    assert client.get("/indexes/docs/documents/d3").status_code == 404
    hits = client.post("/indexes/docs/search", json={"query": "stock market", "top_k": 6}).json()["hits"]
    assert "d3" not in [h["id"] for h in hits] and len(hits) == 5
    bulk = client.post("/indexes/docs/documents/delete", json={"ids": ["d1", "nope"]}).json()
    assert bulk == {"deleted": ["d1"], "not_found": ["nope"]}
    assert client.delete("/indexes/docs").status_code == 204
    assert client.get("/indexes/docs").status_code == 404


def test_upsert_replaces_and_search_by_vector_matches_text_query(client: TestClient) -> None:
    _fill(client)
    client.put("/indexes/docs/documents", json={"documents": [{"id": "d2", "text": "Bonds and equities rallied."}]})
    assert client.get("/indexes/docs").json()["size"] == 6
    assert client.get("/indexes/docs/documents/d2").json()["text"] == "Bonds and equities rallied."
    vector = client.post("/v1/embeddings", json={"input": "markets and money"}).json()["data"][0]["embedding"]
    by_text = client.post("/indexes/docs/search", json={"query": "markets and money", "top_k": 3}).json()["hits"]
    by_vector = client.post("/indexes/docs/search", json={"vector": vector, "top_k": 3, "include": ["vector"]}).json()
    assert [h["id"] for h in by_text] == [h["id"] for h in by_vector["hits"]]
    assert len(by_vector["hits"][0]["vector"]) == 384 and by_vector["hits"][0]["document"] is None


def test_filtered_search_returns_exactly_the_matching_top_k(client: TestClient) -> None:
    _fill(client)
    query = {"query": "animals and pets", "top_k": 3}
    unfiltered = client.post("/indexes/docs/search", json={**query, "top_k": 6}).json()["hits"]
    cases = [
        ({"lang": "en", "topic": "animals"}, {"d1", "d2", "d6"}),
        ({"year": {"$gte": 2015}}, {"d3", "d4", "d5", "d6"}),
        ({"topic": {"$in": ["finance"]}}, {"d3", "d4"}),
        ({"$and": [{"lang": "fr"}, {"year": {"$lt": 2020}}]}, {"d5"}),
    ]
    for spec, matching in cases:
        hits = client.post("/indexes/docs/search", json={**query, "filter": spec}).json()["hits"]
        expected = [h["id"] for h in unfiltered if h["id"] in matching][:3]
        assert [h["id"] for h in hits] == expected, spec


def test_a_dotted_metadata_key_stored_over_http_filters_by_its_own_name(client: TestClient) -> None:
    client.post("/indexes", json={"name": "dots"})
    docs = [
        {"id": "a", "text": "cats", "metadata": {"source.lang": "en", "source.year": 2020}},
        {"id": "b", "text": "dogs", "metadata": {"source.lang": "fr", "source.year": 2010}},
    ]
    assert client.put("/indexes/dots/documents", json={"documents": docs}).status_code == 200
    for spec, expected in (({"source.lang": "en"}, ["a"]), ({"source.year": {"$lt": 2015}}, ["b"])):
        hits = client.post("/indexes/dots/search", json={"query": "pets", "filter": spec}).json()["hits"]
        assert [h["id"] for h in hits] == expected, spec


def test_client_vectors_of_the_right_dim(client: TestClient) -> None:
    assert client.post("/indexes", json={"name": "vec", "metric": "ip"}).status_code == 201
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(5, 384)).astype(np.float32)
    docs = [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]
    assert client.put("/indexes/vec/documents", json={"documents": docs}).status_code == 200
    hits = client.post("/indexes/vec/search", json={"vector": vectors[3].tolist(), "top_k": 1}).json()["hits"]
    assert hits[0]["id"] == "v3"
    assert hits[0]["score"] == pytest.approx(float(vectors[3] @ vectors[3]), rel=1e-4)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", "/indexes/missing/search", {"query": "x"}, 404, "index_not_found"),
        ("put", "/indexes/missing/documents", {"documents": [{"id": "a", "text": "x"}]}, 404, "index_not_found"),
        ("get", "/indexes/missing", None, 404, "index_not_found"),
        ("post", "/indexes", {"name": "..x"}, 422, "invalid_index_name"),
        ("post", "/indexes", {"name": "a/b"}, 422, "invalid_index_name"),
        ("post", "/indexes", {"name": "a\u0000b"}, 422, "invalid_index_name"),
        ("post", "/indexes", {"name": "ok", "index": "LSH"}, 422, "invalid_index_spec"),
        ("post", "/indexes", {"name": "ok", "model": "nope"}, 404, "model_not_found"),
        ("post", "/indexes", {"name": "docs"}, 409, "index_exists"),
        # The router decodes %2F first, so a traversal attempt never reaches a collection route.
        ("get", "/indexes/..%2F..%2Fetc", None, 404, "not_found"),
        ("get", "/indexes/../nope", None, 404, "not_found"),  # the client resolves it to /nope ("/" is the console)
        ("get", "/indexes/.hidden", None, 422, "invalid_index_name"),
        ("post", "/indexes/docs/search", {"vector": [0.1, 0.2]}, 422, "wrong_dimension"),
        ("post", "/indexes/docs/search", {"query": "x", "filter": {"a": {"$regex": "x"}}}, 422, "invalid_filter"),
        ("post", "/indexes/docs/search", {"query": "x", "top_k": 0}, 422, "invalid_request"),
        ("post", "/indexes/docs/search", {"query": "x", "top_k": 5000}, 422, "invalid_request"),
        ("post", "/indexes/docs/search", {}, 422, "invalid_request"),
        ("post", "/indexes/docs/search", {"query": ""}, 422, "invalid_request"),  # as /v1/rerank's query
        ("post", "/indexes/docs/search", {"query": "", "mode": "keyword"}, 422, "invalid_request"),
        ("post", "/indexes/docs/search", {"query": "x", "vector": [0.0] * 384}, 422, "invalid_request"),
        ("put", "/indexes/docs/documents", {"documents": [{"id": "bad\nid", "text": "x"}]}, 422, "invalid_request"),
        ("put", "/indexes/docs/documents", {"documents": [{"id": "", "text": "x"}]}, 422, "invalid_request"),
        ("put", "/indexes/docs/documents", {"documents": [{"id": "a"}]}, 422, "invalid_request"),
        ("put", "/indexes/docs/documents", {"documents": []}, 422, "invalid_request"),
        ("put", "/indexes/docs/documents", {"documents": [{"id": "a", "vector": [1.0]}]}, 422, "wrong_dimension"),
        (
            "put",
            "/indexes/docs/documents",
            {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]},
            422,
            "duplicate_ids",
        ),
        ("delete", "/indexes/docs/documents/nope", None, 404, "document_not_found"),
        ("post", "/indexes/docs/search", {"query": "x", "ef_search": 0}, 422, "invalid_request"),
    ],
)
def test_bad_input_gets_json_4xx(client: TestClient, method: str, path: str, body, status: int, code: str) -> None:
    _fill(client)
    kwargs = {"json": body} if body is not None else {}
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_an_empty_query_is_refused_with_a_plain_message(client: TestClient) -> None:
    _fill(client)
    response = client.post("/indexes/docs/search", json={"query": ""})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "query: String should have at least 1 character"


def test_read_only_replica_serves_the_writer_data_and_refuses_writes(default_models_dir, tmp_path) -> None:
    with LocalClient(create_app(settings_for(default_models_dir, data_dir=tmp_path))) as writer:
        _fill(writer)
        expected = writer.post("/indexes/docs/search", json={"query": "a cat", "top_k": 3}).json()["hits"]
    files = list(tmp_path.rglob("*"))
    for path in [*files, tmp_path]:  # as on a volume mounted read-only (root ignores modes: the file list is checked)
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        replica_settings = settings_for(default_models_dir, data_dir=tmp_path, read_only=True)
        with LocalClient(create_app(replica_settings)) as replica:
            got = replica.post("/indexes/docs/search", json={"query": "a cat", "top_k": 3}).json()["hits"]
            assert [h["id"] for h in got] == [h["id"] for h in expected]
            writes = [
                ("put", "/indexes/docs/documents", {"documents": [{"id": "x", "text": "y"}]}),
                ("post", "/indexes", {"name": "new"}),
                ("delete", "/indexes/docs/documents/d1", None),
                ("post", "/indexes/docs/optimize", None),
            ]
            for method, path, body in writes:
                response = getattr(replica, method)(path, **({"json": body} if body else {}))
                assert response.status_code == 403 and response.json()["error"]["code"] == "read_only"
        assert sorted(p for p in tmp_path.rglob("*")) == sorted(files), "a replica must not write to the volume"
    finally:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_vectors_as_base64_float32(client: TestClient) -> None:
    import base64

    assert client.post("/indexes", json={"name": "b64"}).status_code == 201
    vector = np.random.default_rng(0).normal(size=384).astype("<f4")
    encoded = base64.b64encode(vector.tobytes()).decode()
    put = client.put("/indexes/b64/documents", json={"documents": [{"id": "v", "vector_base64": encoded}]})
    assert put.status_code == 200, put.text
    hits = client.post("/indexes/b64/search", json={"vector": vector.tolist(), "include": ["vector"]}).json()["hits"]
    assert hits[0]["id"] == "v" and np.allclose(hits[0]["vector"], vector, atol=1e-6)  # stored as sent
    bad = {
        "not base64": "###",
        "wrong size": base64.b64encode(vector[:10].tobytes()).decode(),
        "nan": base64.b64encode(np.full(384, np.nan, dtype="<f4").tobytes()).decode(),
    }
    for what, value in bad.items():
        response = client.put("/indexes/b64/documents", json={"documents": [{"id": what, "vector_base64": value}]})
        assert response.status_code == 422 and "vector_base64" in response.json()["error"]["message"], what
    both = {"id": "x", "vector": vector.tolist(), "vector_base64": encoded}
    assert client.put("/indexes/b64/documents", json={"documents": [both]}).status_code == 422
    assert client.get("/indexes/b64").json()["size"] == 1  # nothing half-written


def test_hits_have_every_documented_field_and_any_stored_metadata(client: TestClient) -> None:
    """Search writes its JSON itself (not through SearchResponse): every SearchHit field is there,
    and metadata orjson cannot write (an integer past 64 bits, which batch builds before the store
    checked the API's rule could store) is still returned exactly."""
    import json
    import sqlite3

    from app.schemas.search import SearchHit
    from app.search.store import Document

    _fill(client)
    text = "The cat sat on the mat."
    vector = np.array(client.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"], "float32")
    metadata = {"n": 2**70, "nested": {"deep": [1, "x"]}}
    collection = client.app.state.collections.get("docs")  # type: ignore[attr-defined]
    collection.upsert([Document("huge", text, {}, vector)])
    with sqlite3.connect(collection.folder / "documents.sqlite") as db:  # as such a build left it
        db.execute("UPDATE documents SET metadata = ? WHERE id = 'huge'", (json.dumps(metadata),))
    body = client.post("/indexes/docs/search", json={"query": "cat on a mat", "top_k": 7}).json()
    assert set(body) == {"hits", "took_ms", "index_type"} and len(body["hits"]) == 7
    for hit in body["hits"]:
        assert list(hit) == list(SearchHit.model_fields)
    huge = next(h for h in body["hits"] if h["id"] == "huge")
    assert huge["metadata"] == {"n": 2**70, "nested": {"deep": [1, "x"]}}
    plain = client.post("/indexes/docs/search", json={"query": "cat", "top_k": 1, "include": []}).json()
    assert plain["hits"][0]["metadata"] is None and plain["hits"][0]["document"] is None


def test_search_reads_and_returns_exactly_the_fields_include_names(client: TestClient) -> None:
    """The store reads only the columns `include` names (ids alone for []), and each field comes back
    as stored whichever others are asked for."""
    _fill(client)
    expected = {i: (t, m) for i, t, m in DOCS}
    for include in ([], ["document"], ["metadata"], ["vector"], ["document", "metadata", "vector"]):
        body = {"query": "a cat sleeping", "top_k": 6, "include": include}
        hits = client.post("/indexes/docs/search", json=body).json()["hits"]
        assert len(hits) == 6, include
        for hit in hits:
            text, metadata = expected[hit["id"]]
            assert hit["document"] == (text if "document" in include else None)
            assert hit["metadata"] == (metadata if "metadata" in include else None)
            assert (hit["vector"] is not None and len(hit["vector"]) == 384) is ("vector" in include)
