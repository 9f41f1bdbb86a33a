"""The query tower (training/query_tower.py): a layer-dropped copy of the reranker's checkpoint,
distilled to its vectors on short texts, then exported into the reranker's folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.core.manifest import BiEncoderSpec, Manifest
from app.inference.text_model import TextModel
from tests.conftest import make_tiny_sentence_transformer
from training.cli import app as training_cli
from training.data.beir import RetrievalDataset
from training.export.text import export_query_tower, export_text_model
from training.query_tower import (
    LayerDropStudent,
    QueryTowerConfig,
    alignment,
    distil,
    lr_factor,
    query_like_texts,
)
from training.sources import load_sentence_transformer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tower"), dropout=0.0)


def test_a_layer_dropped_student_keeps_the_chosen_layers_and_the_space(tiny: Path, tmp_path: Path) -> None:
    student = LayerDropStudent(str(tiny), [1])
    assert len(student.body.encoder.layer) == 1 and student.body.config.num_hidden_layers == 1
    student.save(tmp_path / "saved")
    reloaded = load_sentence_transformer(str(tmp_path / "saved"))
    texts = ["a boundary layer on a flat plate", "lift of a swept wing"]
    assert np.allclose(reloaded.encode(texts), student.encode(texts), atol=1e-5)
    assert len(reloaded[0].auto_model.encoder.layer) == 1


@pytest.mark.parametrize("keep", [[], [2], [1, 0], [0, 0], [-1]])
def test_layer_choices_that_cannot_work_are_refused(tiny: Path, keep: list[int]) -> None:
    with pytest.raises(ValueError, match="ascending, distinct"):
        LayerDropStudent(str(tiny), keep)


def test_the_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = QueryTowerConfig(steps=1000, warmup=100)
    assert lr_factor(0, config) == pytest.approx(0.01) and lr_factor(99, config) == 1.0
    assert lr_factor(550, config) == pytest.approx(0.5) and lr_factor(1000, config) == pytest.approx(0.0)
    constant = QueryTowerConfig(steps=1000, warmup=0, decay=False)
    assert lr_factor(0, constant) == lr_factor(999, constant) == 1.0


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 0}, {"lr": 0.0}, {"warmup": -1}, {"max_tokens": 0}])
def test_config_values_that_cannot_train_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="query tower"):
        QueryTowerConfig(**bad)


def test_distillation_brings_the_student_towards_the_teacher(tiny: Path, sts_sentences: list[str]) -> None:
    # A random 2-layer BERT puts every sentence near one direction; the teacher here is the full
    # model's vectors turned by a fixed rotation, so the student starts far from it (no head to learn
    # the turn: the body must move).
    rotation, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((32, 32)))
    teacher = load_sentence_transformer(str(tiny))
    texts, dev = sts_sentences[:256], sts_sentences[300:364]
    targets = (teacher.encode(texts, normalize_embeddings=True) @ rotation).astype(np.float32)
    dev_targets = (teacher.encode(dev, normalize_embeddings=True) @ rotation).astype(np.float32)
    torch.manual_seed(0)
    student = LayerDropStudent(str(tiny), [0])
    config = QueryTowerConfig(steps=40, batch_size=16, lr=2e-3, warmup=5)
    curve = distil(student, texts, targets, config, (dev, dev_targets))
    assert [step for step, _ in curve] == [0, 40]
    assert curve[-1][1] > curve[0][1] + 0.3, curve  # held-out sentences, not the training ones
    assert curve[-1][1] == pytest.approx(alignment(student, dev, dev_targets), abs=1e-6)
    with pytest.raises(ValueError, match="texts for"):
        distil(student, texts[:8], targets[:8], config)


def test_training_texts_hold_no_held_out_query() -> None:
    corpus = {f"d{i}": {"title": f"Title {i}", "text": f"First sentence {i}. Second one."} for i in range(4)}
    queries = {f"q{i}": f"query number {i}" for i in range(10)}
    qrels = {f"q{i}": {"d0": 1} for i in range(10)}
    dataset = RetrievalDataset(corpus, queries, qrels)
    held_out = dataset.split_queries(0)[1].queries.values()
    sts = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stsbenchmark" / "sts-train.csv"
    texts = query_like_texts(sts, {"toy": dataset})
    assert "Title 2" in texts and "First sentence 2." in texts and "Second one." not in texts
    assert not set(held_out) & set(texts)
    assert len([t for t in texts if t.startswith("query number")]) == 5


def test_an_exported_query_tower_joins_the_reranker_without_changing_its_fingerprint(
    tiny: Path, tmp_path: Path, sts_sentences: list[str]
) -> None:
    reranker = tmp_path / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:100], bi_encoder=BiEncoderSpec())
    before = Manifest.load(reranker).fingerprint
    LayerDropStudent(str(tiny), [0]).save(tmp_path / "tower")
    manifest = export_query_tower(reranker, str(tmp_path / "tower"), sts_sentences[:100], max_query_tokens=5)
    spec = manifest.bi_encoder
    assert spec is not None and spec.query_tower == "query" and Manifest.load(reranker).fingerprint == before
    assert spec.query_tower_max_tokens == 5  # longer queries: the reranker's own graph
    tower = Manifest.load(reranker / "query")
    assert tower.name == "tiny-rerank-query" and tower.dim == manifest.dim
    assert not tower.verify_files(reranker / "query")
    queries = sorted(sts_sentences[:100], key=len)[:20]
    own = TextModel(reranker, manifest).encode(queries)
    distilled = TextModel(reranker / "query", tower).encode(queries)
    assert spec.query_alignment is not None and -1 <= spec.query_alignment <= 1
    assert (own * distilled).sum(1).mean() == pytest.approx(spec.query_alignment, abs=1e-3)


def test_re_exporting_the_reranker_keeps_its_query_tower_only_for_the_same_checkpoint(
    tiny: Path, tmp_path: Path, sts_sentences: list[str], default_models_dir: Path
) -> None:
    reranker = tmp_path / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:50], bi_encoder=BiEncoderSpec())
    LayerDropStudent(str(tiny), [0]).save(tmp_path / "tower")
    spec = export_query_tower(reranker, str(tmp_path / "tower"), sts_sentences[:50], max_query_tokens=7).bi_encoder
    (reranker / "tokenizer_config.json").write_text("{}")  # damaged: `export --if-missing` re-exports it
    again = export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:50], bi_encoder=BiEncoderSpec())
    assert again.bi_encoder == spec and not again.verify_files(reranker)
    assert not Manifest.load(reranker / "query").verify_files(reranker / "query")
    minilm = Manifest.load(default_models_dir / "minilm-l6").source.checkpoint  # another checkpoint: dropped
    other = export_text_model(minilm, reranker, "tiny-rerank", sts_sentences[:20], bi_encoder=BiEncoderSpec())
    assert other.bi_encoder.query_tower is None and not (reranker / "query").exists()


def test_a_query_tower_is_refused_for_other_kinds_and_other_sizes(
    tiny: Path, tmp_path: Path, sts_sentences: list[str], default_models_dir: Path
) -> None:
    text_model = tmp_path / "tiny-text"
    export_text_model(str(tiny), text_model, "tiny-text", sts_sentences[:50])
    with pytest.raises(ValueError, match="bi-encoder"):
        export_query_tower(text_model, str(tiny), sts_sentences[:50])
    with pytest.raises(ValueError, match="max_query_tokens must be >= 1"):
        export_query_tower(text_model, str(tiny), sts_sentences[:50], max_query_tokens=0)
    reranker = tmp_path / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:50], bi_encoder=BiEncoderSpec())
    minilm = Manifest.load(default_models_dir / "minilm-l6").source.checkpoint
    with pytest.raises(ValueError, match="32-dimensional"):
        export_query_tower(reranker, minilm, sts_sentences[:50])
    assert not (reranker / "query").exists() and Manifest.load(reranker).bi_encoder.query_tower is None


def test_the_cli_trains_and_exports_a_query_tower(
    tiny: Path, tmp_path: Path, sts_sentences: list[str], small_beir: Path
) -> None:
    reranker = tmp_path / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", sts_sentences[:50], bi_encoder=BiEncoderSpec())
    sts = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stsbenchmark"
    train = ["train-query-tower", "--reranker", str(reranker), "--layers", "1", "--steps", "3"]
    train += ["--out", str(tmp_path / "tower"), "--corpus", str(small_beir), "--sts", str(sts)]
    result = CliRunner().invoke(training_cli, train)
    assert result.exit_code == 0, result.output
    assert "step 3: loss" in result.output and (tmp_path / "tower" / "modules.json").is_file()
    export = ["export-query-tower", "--source", str(tmp_path / "tower"), "--reranker", str(reranker)]
    export += ["--max-query-tokens", "9"]
    result = CliRunner().invoke(training_cli, [*export, "--parity-data", str(sts / "sts-dev.csv")])
    assert result.exit_code == 0, result.output
    spec = Manifest.load(reranker).bi_encoder
    assert spec.query_tower == "query" and spec.query_tower_max_tokens == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "5"], "ascending, distinct"),
        (["--layers", "a,b"], "invalid literal"),
        (["--corpus", "/nonexistent"], "nonexistent"),
    ],
)
def test_the_cli_refuses_what_cannot_train(tiny: Path, tmp_path: Path, args: list[str], message: str) -> None:
    reranker = tmp_path / "tiny-rerank"
    export_text_model(str(tiny), reranker, "tiny-rerank", ["a sentence", "another one"], bi_encoder=BiEncoderSpec())
    sts = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "stsbenchmark"
    base = ["train-query-tower", "--reranker", str(reranker), "--out", str(tmp_path / "t"), "--sts", str(sts)]
    result = CliRunner().invoke(training_cli, [*base, "--steps", "1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t").exists()
