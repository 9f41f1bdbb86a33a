"""/v1/rerank with a real exported cross-encoder: Cohere and Jina shapes, the cohere client, errors,
and reranking inside search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.manifest import Manifest
from app.inference.cross_encoder import CrossEncoderModel
from app.main import create_app
from tests.conftest import LocalClient, live_server, settings_for

QUERY = "How do wings produce lift?"
DOCS = [
    "Wings produce lift by deflecting air downward.",
    "The stock market closed higher today.",
    "Lift arises from the pressure difference over an airfoil.",
    "A recipe for chocolate cake.",
]


@pytest.fixture(scope="module")
def client(rerank_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = settings_for(rerank_models_dir, data_dir=tmp_path_factory.mktemp("data"))
    with LocalClient(create_app(settings)) as test_client:
        yield test_client


def _reference_scores(models: Path, query: str, docs: list[str]) -> np.ndarray:
    """The exported graph's source model in PyTorch, on the same pair ids."""
    from transformers import AutoModelForSequenceClassification

    folder = models / "tiny-ce"
    manifest = Manifest.load(folder)
    runner = CrossEncoderModel(folder, manifest)
    torch_model = AutoModelForSequenceClassification.from_pretrained(manifest.source.checkpoint).eval()
    from training.export.cross_encoder import _torch_scores

    return _torch_scores(torch_model, runner.pairs(query, docs), runner)


def test_cohere_shape_sorted_scores_match_pytorch(client: TestClient, rerank_models_dir: Path) -> None:
    body = client.post("/v1/rerank", json={"model": "tiny-ce", "query": QUERY, "documents": DOCS}).json()
    assert body["model"] == "tiny-ce" and body["id"] and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all("document" not in r for r in results)  # Cohere: return_documents defaults to false
    logits = _reference_scores(rerank_models_dir, QUERY, DOCS)
    expected = 1 / (1 + np.exp(-logits))
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-4)


def test_jina_shape_with_objects_top_n_and_documents(client: TestClient) -> None:
    request = {
        "model": "tiny-ce",
        "query": QUERY,
        "documents": [{"text": d} for d in DOCS],
        "top_n": 2,
        "return_documents": True,
    }
    body = client.post("/rerank", json=request).json()
    assert len(body["results"]) == 2
    for result in body["results"]:
        assert result["document"]["text"] == DOCS[result["index"]]
    full = client.post("/v1/rerank", json={**request, "top_n": None}).json()["results"]
    assert [r["index"] for r in full[:2]] == [r["index"] for r in body["results"]]


def test_max_tokens_per_doc_truncates(client: TestClient) -> None:
    long_doc = "lift " * 200
    a = client.post("/v1/rerank", json={"query": QUERY, "documents": [long_doc], "max_tokens_per_doc": 5}).json()
    b = client.post("/v1/rerank", json={"query": QUERY, "documents": ["lift " * 5]}).json()
    assert a["results"][0]["relevance_score"] == pytest.approx(b["results"][0]["relevance_score"], abs=1e-6)
    assert a["usage"]["total_tokens"] == b["usage"]["total_tokens"]


def test_the_cohere_client_reranks(rerank_models_dir: Path, tmp_path: Path) -> None:
    cohere = pytest.importorskip("cohere")
    with live_server(settings_for(rerank_models_dir, data_dir=tmp_path)) as base_url:
        co = cohere.ClientV2(api_key="unused", base_url=base_url)
        response = co.rerank(model="tiny-ce", query=QUERY, documents=DOCS, top_n=3)
    assert len(response.results) == 3
    assert {r.index for r in response.results} <= {0, 1, 2, 3}
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"query": QUERY, "documents": []}, 422, "invalid_request"),
        ({"query": "", "documents": DOCS}, 422, "invalid_request"),
        ({"documents": DOCS}, 422, "invalid_request"),
        ({"query": QUERY, "documents": [1, 2]}, 422, "invalid_request"),
        ({"query": QUERY, "documents": DOCS, "top_n": 0}, 422, "invalid_request"),
        ({"query": QUERY, "documents": DOCS, "model": "nope"}, 404, "model_not_found"),
        ({"query": QUERY, "documents": DOCS, "model": "minilm-l6"}, 400, "wrong_model_kind"),
        ({"query": QUERY, "documents": ["x"] * 5000}, 413, "too_many_inputs"),
        ({"query": QUERY, "documents": ["lift " * 300], "truncate": False}, 413, "input_too_long"),
        ({"query": QUERY, "documents": DOCS, "truncate": False, "max_tokens_per_doc": 2}, 413, "input_too_long"),
    ],
)
def test_bad_rerank_requests_get_json_4xx(client: TestClient, body: dict, status: int, code: str) -> None:
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_embedding_with_a_cross_encoder_is_refused(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "tiny-ce", "input": "x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_model_kind"


def test_search_reranks_first_stage_hits(client: TestClient) -> None:
    assert client.post("/indexes", json={"name": "rr"}).status_code == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    assert client.put("/indexes/rr/documents", json={"documents": docs}).status_code == 200
    plain = client.post("/indexes/rr/search", json={"query": QUERY, "top_k": 4}).json()["hits"]
    reranked = client.post(
        "/indexes/rr/search",
        json={
            "query": QUERY,
            "top_k": 4,
            "include": ["metadata"],
            "rerank": {"model": "tiny-ce", "candidates": 4, "top_n": 3},
        },
    ).json()["hits"]
    assert len(reranked) == 3 and all(h["document"] is None for h in reranked)
    expected = client.post("/v1/rerank", json={"model": "tiny-ce", "query": QUERY, "documents": DOCS}).json()["results"]
    assert [h["id"] for h in reranked] == [f"d{r['index']}" for r in expected[:3]]
    first_stage = {h["id"]: h["score"] for h in plain}
    for hit in reranked:
        assert hit["first_stage_score"] == pytest.approx(first_stage[hit["id"]], abs=1e-5)


def test_models_by_id_describe_every_kind_the_same_way(client: TestClient) -> None:
    """GET /v1/models/{id} answers for every model GET /v1/models lists (it was 400 for rerankers)."""
    listed = client.get("/v1/models").json()["data"]
    assert {m["id"] for m in listed} == {"minilm-l6", "tiny-ce"}
    for entry in listed:
        one = client.get(f"/v1/models/{entry['id']}")
        assert one.status_code == 200 and one.json() == entry
        assert set(entry) >= {"id", "kind", "capabilities", "dim", "towers", "backend", "precision", "parity"}
    by_id = {m["id"]: m for m in listed}
    assert by_id["tiny-ce"]["kind"] == "cross-encoder" and by_id["tiny-ce"]["capabilities"] == ["score"]
    assert by_id["tiny-ce"]["dim"] is None and by_id["tiny-ce"]["parity"]["n_samples"] > 0
    assert by_id["minilm-l6"]["capabilities"] == ["embed:text"] and by_id["minilm-l6"]["dim"] == 384
    assert by_id["minilm-l6"]["towers"]["text"]["pooling"] == "mean"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
