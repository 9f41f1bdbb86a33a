"""Second-stage vectors: a collection declaring `rescore` keeps each document's vector from a second
model (upserts and batch builds, local and Ray), search's `rerank` rescores from them with one query
embedding (equal to reranking by re-embedding), they survive kill -9, and a missing rescore model
degrades the collection (reported in /ready; plain search works; writes and rerank get 503)."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.manifest import Manifest
from app.main import create_app
from app.search.builder import BuildOptions, InputError, build_index
from app.search.manager import CollectionManager
from tests.app.search.test_durability import _start_server
from tests.conftest import LocalClient, _free_port, make_another_version, make_bi_encoder_copy, settings_for

QUERY = "How do wings produce lift?"
TEXTS = [
    "The stock market closed higher today.",
    "Wings produce lift by deflecting air downward.",
    "A recipe for chocolate cake.",
    "Lift arises from the pressure difference over an airfoil.",
    "Supersonic flow over a flat plate.",
    "Boundary layer transition on swept wings.",
]


@pytest.fixture(scope="module")
def models(default_models_dir: Path, rerank_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rescore-models")
    (folder / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    (folder / "tiny-ce").symlink_to(rerank_models_dir / "tiny-ce")
    make_bi_encoder_copy(default_models_dir, folder / "minilm-rerank", first_stage_weight=0.5)
    return folder


@pytest.fixture(scope="module")
def client(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = settings_for(models, data_dir=tmp_path_factory.mktemp("data"), default_reranker="minilm-rerank")
    with LocalClient(create_app(settings)) as test_client:
        yield test_client


def _create(client: TestClient, name: str, **rescore: object) -> None:
    body = {"name": name, "model": "minilm-l6", "rescore": {"model": "minilm-rerank", **rescore}}
    response = client.post("/indexes", json=body)
    assert response.status_code == 201, response.text


def _search(client: TestClient, name: str, **body: object) -> list[dict]:
    response = client.post(f"/indexes/{name}/search", json={"query": QUERY, "top_k": 6, **body})
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def test_stored_vectors_rescore_like_reranking_by_re_embedding(client: TestClient) -> None:
    _create(client, "stored")
    assert client.post("/indexes", json={"name": "plain", "model": "minilm-l6"}).status_code == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    for name in ("stored", "plain"):
        assert client.put(f"/indexes/{name}/documents", json={"documents": docs}).status_code == 200
    info = client.get("/indexes/stored").json()
    fingerprint = client.get("/v1/models/minilm-rerank").json()["fingerprint"]
    assert info["rescore"] == {"model": "minilm-rerank", "dim": 384, "weight": 0.5, "fingerprint": fingerprint}
    stored = _search(client, "stored", rerank={"candidates": 6})
    embedded = _search(client, "plain", rerank={"model": "minilm-rerank", "candidates": 6})  # re-embeds
    assert [h["id"] for h in stored] == [h["id"] for h in embedded]
    for a, b in zip(stored, embedded, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert a["first_stage_score"] == pytest.approx(b["first_stage_score"], abs=1e-5)
        assert a["score"] == pytest.approx(1.5 * a["first_stage_score"], abs=1e-4)  # same model: 1 x cos + 0.5 x cos
    assert {stored[0]["id"], stored[1]["id"]} == {"d1", "d3"}
    # A weight chosen at creation replaces the reranker's own.
    _create(client, "weighted", weight=0.0)
    client.put("/indexes/weighted/documents", json={"documents": docs})
    for hit in _search(client, "weighted", rerank={"candidates": 6}):
        assert hit["score"] == pytest.approx(hit["first_stage_score"], abs=1e-4)


def test_documents_without_text_keep_their_first_stage_score(client: TestClient) -> None:
    _create(client, "mixed")
    vector = client.post("/v1/embeddings", json={"input": ["lift on an airfoil"]}).json()["data"][0]["embedding"]
    docs = [{"id": "text", "text": TEXTS[1]}, {"id": "vector-only", "vector": vector}]
    assert client.put("/indexes/mixed/documents", json={"documents": docs}).status_code == 200
    hits = {h["id"]: h for h in _search(client, "mixed", rerank={"candidates": 2})}
    only = hits["vector-only"]
    assert only["score"] == pytest.approx(1.5 * only["first_stage_score"], abs=1e-4)


def test_a_failing_first_stage_drops_the_second_stage_query_embedding(client: TestClient) -> None:
    """The second-stage query embedding starts beside the first stage; when the first stage fails
    (here: hybrid search over a collection without text) the request still gets its 4xx, and when it
    finds nothing the result is empty; the next searches are unaffected."""
    _create(client, "untexted")
    vector = client.post("/v1/embeddings", json={"input": ["lift"]}).json()["data"][0]["embedding"]
    body = {"query": QUERY, "mode": "hybrid", "rerank": {"candidates": 2}}
    response = client.post("/indexes/untexted/search", json=body)  # empty: neither text nor hits
    assert response.status_code == 422 and response.json()["error"]["code"] == "keyword_search_unavailable"
    assert _search(client, "untexted", rerank={"candidates": 2}) == []
    client.put("/indexes/untexted/documents", json={"documents": [{"id": "v", "vector": vector}]})
    for _ in range(3):
        response = client.post("/indexes/untexted/search", json=body)
        assert response.status_code == 422, response.text
    hits = _search(client, "untexted", rerank={"candidates": 2})
    assert [h["id"] for h in hits] == ["v"] and hits[0]["score"] == pytest.approx(1.5 * hits[0]["first_stage_score"])


@pytest.mark.parametrize(
    ("rescore", "status", "code"),
    [
        ({"model": "nope"}, 404, "model_not_found"),
        ({"model": "tiny-ce"}, 400, "wrong_model_kind"),
        ({"model": "minilm-rerank", "weight": -1}, 422, "invalid_request"),
        ({"model": "minilm-rerank", "weight": 1e308}, 422, "invalid_request"),
        ({"model": "minilm-rerank", "weight": "high"}, 422, "invalid_request"),
        ({"weight": 1}, 422, "invalid_request"),
    ],
)
def test_bad_rescore_specs(client: TestClient, rescore: dict, status: int, code: str) -> None:
    response = client.post("/indexes", json={"name": "bad", "model": "minilm-l6", "rescore": rescore})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert client.get("/indexes/bad").status_code == 404  # nothing half-created


def test_a_missing_rescore_model_degrades_only_writes_and_rerank(models: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalClient(create_app(settings_for(models, data_dir=data))) as client:
        _create(client, "wings")
        client.put("/indexes/wings/documents", json={"documents": [{"id": "a", "text": TEXTS[1]}]})
    without = tmp_path / "models"
    without.mkdir()
    (without / "minilm-l6").symlink_to(models / "minilm-l6")
    with LocalClient(create_app(settings_for(without, data_dir=data))) as client:
        ready = client.get("/ready")
        assert ready.status_code == 200
        assert "minilm-rerank" in ready.json()["collections_degraded"]["wings"]
        assert [h["id"] for h in _search(client, "wings")] == ["a"]  # plain search works
        rerank = client.post("/indexes/wings/search", json={"query": QUERY, "rerank": {}})
        write = client.put("/indexes/wings/documents", json={"documents": [{"id": "b", "text": "more"}]})
        for response in (rerank, write):
            assert response.status_code == 503 and response.json()["error"]["code"] == "rescore_model_unavailable"
        assert [h["id"] for h in _search(client, "wings")] == ["a"]  # the refused write left nothing


def test_second_stage_vectors_of_another_model_version_are_never_mixed_into(models: Path, tmp_path: Path) -> None:
    """Second-stage vectors record their model version, like first-stage ones: a build or a server on
    a retrained rescore model neither adds to nor rescores with them; --replace-stale rebuilds the
    collection with the same second-stage model."""
    from app.search.builder import Existing, existing_index

    data = tmp_path / "data"
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    build_index(settings_for(models, data_dir=data), "minilm-l6", source, "v", BuildOptions(rescore="minilm-rerank"))
    retrained = tmp_path / "models"
    retrained.mkdir()
    (retrained / "minilm-l6").symlink_to(models / "minilm-l6")  # the first stage is unchanged
    make_another_version(models / "minilm-rerank", retrained / "minilm-rerank")
    old, new = (Manifest.load(m / "minilm-rerank").fingerprint for m in (models, retrained))
    assert old != new
    assert existing_index(settings_for(models, data_dir=data), "minilm-l6", "v") is Existing.CURRENT
    assert existing_index(settings_for(retrained, data_dir=data), "minilm-l6", "v") is Existing.STALE
    with pytest.raises(InputError, match="second-stage vectors of another version of model 'minilm-rerank'"):
        build_index(settings_for(retrained, data_dir=data), "minilm-l6", source, "v")

    with LocalClient(create_app(settings_for(retrained, data_dir=data))) as client:
        reason = client.get("/ready").json()["collections_degraded"]["v"]
        assert f"fingerprint {old}; the model's is now {new}" in reason and "--replace-stale" in reason
        assert len(_search(client, "v")) == len(TEXTS)  # plain search works
        rerank = client.post("/indexes/v/search", json={"query": QUERY, "rerank": {}})
        write = client.put("/indexes/v/documents", json={"documents": [{"id": "b", "text": "more"}]})
        for response in (rerank, write):
            assert response.status_code == 503 and response.json()["error"]["code"] == "rescore_model_unavailable"

    options = BuildOptions(replace_stale=True)  # no --rescore: the rebuilt collection keeps its own
    build_index(settings_for(retrained, data_dir=data), "minilm-l6", source, "v", options)
    with LocalClient(create_app(settings_for(retrained, data_dir=data))) as client:
        assert client.get("/ready").json()["collections_degraded"] == {}
        assert client.get("/indexes/v").json()["rescore"]["fingerprint"] == new
        assert len(_search(client, "v", rerank={"candidates": 6})) == len(TEXTS)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_the_builder_keeps_second_stage_vectors(models: Path, tmp_path: Path, engine: str) -> None:
    settings = settings_for(models, data_dir=tmp_path / "data", backend="onnxruntime", precision="fp32")
    source = tmp_path / "docs.jsonl"
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    rows.append({"id": "own", "text": "brings its vector", "vector": [0.0] * 383 + [1.0]})
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = BuildOptions(rescore="minilm-rerank", engine=engine, batch_size=4, encode_window=4)
    assert build_index(settings, "minilm-l6", source, "built", options)["size"] == 7
    manager = CollectionManager.from_settings(settings)
    manager.open_all()
    try:
        collection = manager.get("built")
        fingerprint = Manifest.load(models / "minilm-rerank").fingerprint
        assert collection.config.rescore == {
            "model": "minilm-rerank",
            "dim": 384,
            "weight": 0.5,
            "fingerprint": fingerprint,
        }
        stored = collection.store.rescore_vectors([r["id"] for r in rows])
        first = {d: collection.store.get(d, with_vector=True).vector for d in stored}  # type: ignore[union-attr]
    finally:
        manager.close()
    assert set(stored) == {f"d{i}" for i in range(len(TEXTS))}  # the record with its own vector has none
    for doc_id, vector in stored.items():  # same graph as the first stage here: equal vectors
        np.testing.assert_allclose(vector, first[doc_id], atol=1e-4)
    with pytest.raises(InputError, match="bi-encoder or text"):
        build_index(settings, "minilm-l6", source, "other", BuildOptions(rescore="tiny-ce"))


def test_second_stage_vectors_survive_sigkill(models: Path, tmp_path: Path) -> None:
    port = _free_port()
    data = tmp_path / "data"
    server = _start_server(models, data, port, snapshot_every=1_000_000)
    base = f"http://127.0.0.1:{port}"
    acked: list[str] = []
    try:
        create = {"name": "k", "model": "minilm-l6", "rescore": {"model": "minilm-rerank"}}
        httpx.post(f"{base}/indexes", json=create, timeout=30).raise_for_status()
        for batch in range(6):
            docs = [{"id": f"b{batch}-{i}", "text": f"{TEXTS[i % len(TEXTS)]} ({batch})"} for i in range(8)]
            httpx.put(f"{base}/indexes/k/documents", json={"documents": docs}, timeout=60).raise_for_status()
            acked += [d["id"] for d in docs]
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
    settings = settings_for(models, data_dir=data)
    manager = CollectionManager.from_settings(settings)
    manager.open_all()
    try:
        stored = manager.get("k").store.rescore_vectors(acked)
    finally:
        manager.close()
    assert set(stored) == set(acked)
    assert all(abs(float(np.linalg.norm(v)) - 1) < 1e-4 for v in stored.values())


def test_a_reranker_on_its_int8_query_variant_rescores_within_the_parity_bar(
    default_models_dir: Path, tmp_path: Path
) -> None:
    """The rescore query alone runs on the reranker's weight-only int8 graph (here: declared fastest
    alone); its documents, embedded in batches, on the batch variant (here: declared slowest in
    batches, since the export's own measurement makes int8 the throughput choice on some CPUs).
    Rescoring then agrees with re-embedding the candidates (all in one batch) to the parity bar,
    and ranks the same."""
    models = tmp_path / "models"
    shutil.copytree(default_models_dir / "minilm-l6", models / "minilm-l6")
    manifest = Manifest.load(models / "minilm-l6")
    if not any(v.key == "openvino-int8" and v.servable for v in manifest.parity):
        pytest.skip("no servable int8 graph in this export (OpenVINO missing)")
    make_bi_encoder_copy(
        default_models_dir,
        models / "minilm-rerank",
        query_ms={"openvino-int8": 1.0, "openvino-bf16": 9.0, "openvino-fp32": 9.0, "onnxruntime-fp32": 9.0},
        samples_per_s={"openvino-int8": 0.001},
    )
    settings = settings_for(models, data_dir=tmp_path / "data", default_reranker="minilm-rerank")
    with LocalClient(create_app(settings)) as client:
        described = client.get("/v1/models/minilm-rerank").json()
        assert described["query_variant"] == "openvino-int8" and described["precision"] != "int8"
        assert client.get("/v1/models/minilm-l6").json()["query_variant"] is None  # embedding models: one variant
        _create(client, "stored")
        assert client.post("/indexes", json={"name": "plain", "model": "minilm-l6"}).status_code == 201
        docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
        for name in ("stored", "plain"):
            assert client.put(f"/indexes/{name}/documents", json={"documents": docs}).status_code == 200
        stored = _search(client, "stored", rerank={"candidates": 6})
        embedded = _search(client, "plain", rerank={"model": "minilm-rerank", "candidates": 6})
    assert [h["id"] for h in stored] == [h["id"] for h in embedded]
    scores = np.array([[a["score"], b["score"]] for a, b in zip(stored, embedded, strict=True)])
    # min cosine 0.9997 to the reference bounds a score's change by ~sqrt(2 x 0.0003) = 0.025
    assert np.abs(scores[:, 0] - scores[:, 1]).max() < 1e-2
    assert np.abs(scores[:, 0] - scores[:, 1]).max() > 0  # the query really ran on another graph
