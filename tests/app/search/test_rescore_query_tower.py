"""A bi-encoder reranker's query tower: search that rescores with stored vectors embeds its query by
the tower (documents stay the reranker's own vectors), `rescore_query_tower: false` turns it off,
/v1/rerank keeps the reranker's own graph, and a broken tower fails the folder with its reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.core.manifest import BiEncoderSpec, Manifest
from app.inference.text_model import TextModel
from app.main import create_app
from tests.app.search.test_rescore import QUERY, TEXTS
from tests.conftest import LocalClient, make_tiny_sentence_transformer, settings_for
from training.export.text import export_query_tower, export_text_model
from training.query_tower import LayerDropStudent

EXACT = {"backend": "onnxruntime", "precision": "fp32", "query_variant": "off"}  # scores comparable to 1e-5


@pytest.fixture(scope="module")
def models(default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory, sts_sentences: list[str]) -> Path:
    work = tmp_path_factory.mktemp("query-tower")
    tiny = make_tiny_sentence_transformer(work, dropout=0.0)
    folder = work / "models"
    folder.mkdir()
    (folder / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    reranker = folder / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:100], bi_encoder=BiEncoderSpec())
    LayerDropStudent(str(tiny), [0]).save(work / "tower")  # one of its two layers: other vectors than its own
    export_query_tower(reranker, str(work / "tower"), sts_sentences[:100])
    return folder


def _rescored_scores(models: Path, tmp_path: Path, query: str = QUERY, **settings: object) -> dict[str, float]:
    with LocalClient(create_app(settings_for(models, data_dir=tmp_path / "data", **EXACT, **settings))) as client:
        body = {"name": "wings", "model": "minilm-l6", "rescore": {"model": "tiny-rerank", "weight": 0.0}}
        assert client.post("/indexes", json=body).status_code == 201
        docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
        assert client.put("/indexes/wings/documents", json={"documents": docs}).status_code == 200
        search = {"query": query, "top_k": len(TEXTS), "rerank": {"candidates": len(TEXTS)}}
        response = client.post("/indexes/wings/search", json=search)
        assert response.status_code == 200, response.text
        return {hit["id"]: hit["score"] for hit in response.json()["hits"]}


def _expected(folder: Path, query_folder: Path, query: str = QUERY) -> dict[str, float]:
    """Cosines of the query by `query_folder`'s graph to the documents by `folder`'s."""
    documents = TextModel(folder, Manifest.load(folder)).encode(TEXTS)
    query = TextModel(query_folder, Manifest.load(query_folder)).encode([query])[0]
    return {f"d{i}": float(v @ query) for i, v in enumerate(documents)}


def test_stored_rescore_embeds_the_query_by_the_tower(models: Path, tmp_path: Path) -> None:
    reranker = models / "tiny-rerank"
    by_tower, by_own = _expected(reranker, reranker / "query"), _expected(reranker, reranker)
    assert max(abs(by_tower[k] - by_own[k]) for k in by_tower) > 1e-3  # the two are told apart below
    scores = _rescored_scores(models, tmp_path / "on")
    assert scores == pytest.approx(by_tower, abs=1e-5)
    scores = _rescored_scores(models, tmp_path / "off", rescore_query_tower=False)
    assert scores == pytest.approx(by_own, abs=1e-5)


def test_the_tower_is_described_and_rerank_keeps_the_reranker_graph(models: Path, tmp_path: Path) -> None:
    reranker = models / "tiny-rerank"
    with LocalClient(create_app(settings_for(models, data_dir=tmp_path, **EXACT))) as client:
        info = client.get("/v1/models/tiny-rerank").json()
        alignment = Manifest.load(reranker).bi_encoder.query_alignment
        assert info["towers"]["query"]["alignment"] == alignment and info["towers"]["query"]["backend"] == "onnxruntime"
        body = {"model": "tiny-rerank", "query": QUERY, "documents": TEXTS, "return_documents": False}
        response = client.post("/v1/rerank", json=body)
        assert response.status_code == 200, response.text
        scores = {f"d{r['index']}": r["relevance_score"] for r in response.json()["results"]}
    own = _expected(reranker, reranker)
    # relevance_score is the cosine mapped to [0, 1] or the cosine itself: either way the order is its own graph's
    assert sorted(scores, key=scores.get) == sorted(own, key=own.get)


@pytest.mark.parametrize("damage", ["missing-manifest", "missing-file", "other-dim"])
def test_a_broken_query_tower_fails_the_reranker_with_its_reason(
    models: Path, tmp_path: Path, default_models_dir: Path, damage: str
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "minilm-l6").symlink_to(default_models_dir / "minilm-l6")
    reranker = folder / "tiny-rerank"
    shutil.copytree(models / "tiny-rerank", reranker)
    if damage == "missing-manifest":
        (reranker / "query" / "manifest.json").unlink()
    elif damage == "missing-file":
        (reranker / "query" / "model.onnx").unlink()
    else:
        manifest = json.loads((reranker / "query" / "manifest.json").read_text())
        manifest["dim"] = 7
        del manifest["quantization"]  # a valid manifest of another size: the tower check refuses it
        (reranker / "query" / "manifest.json").write_text(json.dumps(manifest))
    with LocalClient(create_app(settings_for(folder, data_dir=tmp_path / "data"))) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert "query tower 'query' of 'tiny-rerank'" in json.dumps(ready.json())
        assert client.post("/v1/embeddings", json={"input": ["still served"]}).status_code == 200
    with LocalClient(
        create_app(settings_for(folder, data_dir=tmp_path / "data2", rescore_query_tower=False))
    ) as client:
        assert client.get("/ready").status_code == 200  # the tower off: the reranker serves without it


def test_no_query_tower_means_the_reranker_embeds_the_query(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "minilm-l6").symlink_to(models / "minilm-l6")
    shutil.copytree(models / "tiny-rerank", folder / "tiny-rerank", ignore=shutil.ignore_patterns("query"))
    manifest = Manifest.load(folder / "tiny-rerank")
    manifest.bi_encoder = BiEncoderSpec()
    manifest.save(folder / "tiny-rerank")
    reranker = folder / "tiny-rerank"
    assert _rescored_scores(folder, tmp_path) == pytest.approx(_expected(reranker, reranker), abs=1e-5)


def test_a_query_longer_than_the_tower_takes_is_embedded_by_the_reranker(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "minilm-l6").symlink_to(models / "minilm-l6")
    reranker = folder / "tiny-rerank"
    shutil.copytree(models / "tiny-rerank", reranker)
    short = "wings"
    limit = len(TextModel(reranker / "query", Manifest.load(reranker / "query")).tokenize([short])[0].ids)
    manifest = Manifest.load(reranker)
    manifest.bi_encoder = manifest.bi_encoder.model_copy(update={"query_tower_max_tokens": limit})
    manifest.save(reranker)
    with LocalClient(create_app(settings_for(folder, data_dir=tmp_path / "d0", **EXACT))) as client:
        assert client.get("/v1/models/tiny-rerank").json()["towers"]["query"]["max_query_tokens"] == limit
    # QUERY has more tokens than `limit`: the reranker's own graph embeds it; `short` goes to the tower
    long_scores = _rescored_scores(folder, tmp_path / "d1")
    assert long_scores == pytest.approx(_expected(reranker, reranker), abs=1e-5)
    assert long_scores != pytest.approx(_expected(reranker, reranker / "query"), abs=1e-3)
    short_scores = _rescored_scores(folder, tmp_path / "d2", query=short)
    assert short_scores == pytest.approx(_expected(reranker, reranker / "query", short), abs=1e-5)
