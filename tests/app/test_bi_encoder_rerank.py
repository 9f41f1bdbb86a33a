"""The `bi-encoder` reranker kind: scores are the cosines of its own embeddings (checked against the
same folder served as a text model), the Cohere/Jina shapes unchanged, fusion with the first stage
inside search, the default-reranker setting, bad input; and the exporter writing the kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.manifest import BiEncoderSpec, Manifest, ModelKind
from app.inference.registry import BiEncoderScorer, TextEncoder
from app.main import create_app
from tests.conftest import LocalClient, make_bi_encoder_copy, make_tiny_sentence_transformer, settings_for

QUERY = "How do wings produce lift?"
DOCS = [
    "The stock market closed higher today.",
    "Wings produce lift by deflecting air downward.",
    "A recipe for chocolate cake.",
    "Lift arises from the pressure difference over an airfoil.",
]
WEIGHTS = BiEncoderSpec(model_weight=1.0, first_stage_weight=0.5, fitted_on="test")


@pytest.fixture(scope="module")
def models(default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """minilm-l6, and the same folder as a bi-encoder reranker `minilm-rerank`."""
    folder = tmp_path_factory.mktemp("bi-models")
    (folder / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    make_bi_encoder_copy(default_models_dir, folder / "minilm-rerank", WEIGHTS.first_stage_weight)
    return folder


@pytest.fixture(scope="module")
def client(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = settings_for(models, data_dir=tmp_path_factory.mktemp("data"), max_inputs_per_request=16)
    with LocalClient(create_app(settings)) as test_client:
        yield test_client


def embed(client: TestClient, texts: list[str]) -> np.ndarray:
    rows = client.post("/v1/embeddings", json={"model": "minilm-l6", "input": texts}).json()["data"]
    return np.array([r["embedding"] for r in rows])


def test_listed_as_a_scorer(client: TestClient) -> None:
    info = client.get("/v1/models/minilm-rerank").json()
    assert info["kind"] == "bi-encoder" and info["capabilities"] == ["score"] and info["dim"] == 384


def test_scores_are_the_cosines_of_its_embeddings(client: TestClient) -> None:
    body = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS, "return_documents": True}).json()
    assert body["model"] == "minilm-rerank"  # the only reranker: the default
    vectors = embed(client, [QUERY, *DOCS])
    cosines = vectors[1:] @ vectors[0]
    results = body["results"]
    assert [r["index"] for r in results] == list(np.argsort(-cosines, kind="stable"))
    for r in results:
        assert r["relevance_score"] == pytest.approx(float(cosines[r["index"]]), abs=1e-4)
        assert r["document"]["text"] == DOCS[r["index"]]
    assert {results[0]["index"], results[1]["index"]} == {1, 3}  # the two about lift
    assert body["usage"]["total_tokens"] > 0
    top = client.post("/v1/rerank", json={"model": "minilm-rerank", "query": QUERY, "documents": DOCS, "top_n": 1})
    assert len(top.json()["results"]) == 1


def test_search_rerank_fuses_with_the_first_stage(client: TestClient) -> None:
    assert client.post("/indexes", json={"name": "wings", "model": "minilm-l6"}).status_code == 201
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(DOCS)]
    assert client.put("/indexes/wings/documents", json={"documents": docs}).status_code == 200
    response = client.post(
        "/indexes/wings/search",
        json={"query": QUERY, "top_k": 4, "rerank": {"model": "minilm-rerank", "candidates": 4}},
    )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    vectors = embed(client, [QUERY, *DOCS])
    for hit in hits:
        cosine = float(vectors[1 + int(hit["id"][1:])] @ vectors[0])
        # the reranker's model is the first stage's here: fused = 1.0 x cosine + 0.5 x first stage
        assert hit["first_stage_score"] == pytest.approx(cosine, abs=1e-4)
        assert hit["score"] == pytest.approx(1.5 * cosine, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"query": QUERY, "documents": []}, 422),
        ({"query": QUERY, "documents": ["x"] * 17}, 413),
        ({"query": QUERY, "documents": ["lift " * 400], "truncate": False}, 413),
        ({"query": QUERY, "documents": DOCS, "model": "minilm-l6"}, 400),
        ({"query": QUERY, "documents": DOCS, "model": "nope"}, 404),
        ({"query": "", "documents": DOCS, "model": "minilm-rerank", "top_n": 0}, 422),
    ],
)
def test_bad_rerank_requests(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_the_default_reranker_setting_wins(models: Path, tmp_path: Path) -> None:
    settings = settings_for(models, data_dir=tmp_path, default_reranker="nope")
    with LocalClient(create_app(settings)) as client:
        response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert response.status_code == 404 and "nope" in response.json()["error"]["message"]


def test_a_bi_encoder_runs_its_own_streams(models: Path) -> None:
    """Its query embedding is on search's latency path: one stream of every thread, while embedding
    models keep `streams` concurrent passes."""
    settings = settings_for(models, streams=2, bi_encoder_streams=1, threads=2)
    folder = models / "minilm-rerank"
    scorer = BiEncoderScorer(folder, Manifest.load(folder), settings)
    first = TextEncoder(models / "minilm-l6", Manifest.load(models / "minilm-l6"), settings)
    assert scorer.encoder.batcher.workers == 1 and first.batcher.workers == 2
    if scorer.encoder.backend == "openvino":
        assert scorer.encoder.model.session._compiled.get_property("NUM_STREAMS") == 1
        assert scorer.encoder.model.session._compiled.get_property("INFERENCE_NUM_THREADS") == 2


def test_the_exporter_writes_a_bi_encoder_folder(tmp_path: Path, sts_sentences: list[str]) -> None:
    from training.export.text import export_text_model

    source = make_tiny_sentence_transformer(tmp_path)
    manifest = export_text_model(
        str(source), tmp_path / "models" / "tiny-rerank", "tiny-rerank", sts_sentences[:50], bi_encoder=WEIGHTS
    )
    assert manifest.kind == ModelKind.BI_ENCODER and manifest.bi_encoder == WEIGHTS
    assert manifest.parity and all(p.servable for p in manifest.parity if p.precision.value == "fp32")
    saved = json.loads((tmp_path / "models" / "tiny-rerank" / "manifest.json").read_text())
    assert saved["kind"] == "bi-encoder" and saved["bi_encoder"]["first_stage_weight"] == 0.5
    with LocalClient(create_app(settings_for(tmp_path / "models", data_dir=tmp_path / "data"))) as client:
        response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCS})
        assert response.status_code == 200 and response.json()["model"] == "tiny-rerank"
    with pytest.raises(ValueError, match="no `bi_encoder` section"):
        Manifest.model_validate({**saved, "kind": "text"})
