"""Fixtures shared by the training tests: Cranfield in BEIR form and a small cut of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA, STS_DEV, make_tiny_sentence_transformer
from training.config import TrainConfig, set_dotted
from training.data.beir import RetrievalDataset, convert_cranfield, load_beir
from training.eval.first_stage import CorpusIndex
from training.trainer import Loop, train


def tiny_train_config(tmp_path: Path, tiny_model: Path, data: Path, **overrides: object) -> TrainConfig:
    """A 3-step run of `tiny_model` on BEIR folder `data`; `overrides` by dotted key (`"loss.name"`)."""
    raw: dict = {
        "name": "tiny-run",
        "base_model": str(tiny_model),
        "data": {"format": "beir", "path": str(data)},
        "batch_size": 8,
        "max_steps": 3,
        "max_seq_length": 64,
        "runs_dir": str(tmp_path / "runs"),
        "eval_sts": str(STS_DEV),
        "mining": {"per_query": 4, "rank_window": [2, 30]},
    }
    return TrainConfig.model_validate(set_dotted(raw, overrides))


def train_killed_at_step(config: TrainConfig, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `config` until its `step`-th training step raises KeyboardInterrupt (a killed run: the
    run folder and its last checkpoint stay behind)."""
    real_step, calls = Loop.step, {"n": 0}

    def dies(self: Loop, raw_batch: list) -> tuple[float, int]:
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt("killed")
        return real_step(self, raw_batch)

    with monkeypatch.context() as patch:
        patch.setattr(Loop, "step", dies)
        with pytest.raises(KeyboardInterrupt):
            train(config, show_progress=False)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random sentence-transformers model (one per test module: a test may train it)."""
    return make_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def cranfield(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_cranfield(SHARED_DATA / "cranfield", tmp_path_factory.mktemp("beir") / "cranfield")


@pytest.fixture(scope="session")
def small_beir(cranfield: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cranfield cut to 40 judged queries and the documents they judge (plus 100 others)."""
    dataset = load_beir(cranfield)
    queries = sorted(dataset.qrels, key=int)[:40]
    docs = {d for q in queries for d in dataset.qrels[q]} | set(list(dataset.corpus)[:100])
    out = tmp_path_factory.mktemp("small") / "cran-small"
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, **dataset.corpus[d]}) + "\n" for d in dataset.corpus if d in docs)
    )
    (out / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": dataset.queries[q]}) + "\n" for q in queries)
    )
    (out / "qrels" / "test.tsv").write_text(
        "".join(f"{q}\t{d}\t{g}\n" for q in queries for d, g in dataset.qrels[q].items())
    )
    return out


# (a sentence-transformers model, a dataset, that dataset's corpus encoded by the model)
MinedCorpus = tuple[Any, RetrievalDataset, CorpusIndex]


@pytest.fixture(scope="session")
def minilm_small_corpus(small_beir: Path) -> MinedCorpus:
    """(the packaged MiniLM, `small_beir`, its corpus encoded by that model once): mining tests pass
    the encoding to `mine_negatives` (`corpus=`), as training does, instead of each encoding the
    ~400 abstracts again (~12 s a time on 2 cores). A random tiny model's scores are all alike."""
    from training.sources import DEFAULT_BASE_MODEL, load_sentence_transformer

    dataset = load_beir(small_beir)
    model = load_sentence_transformer(DEFAULT_BASE_MODEL)
    return model, dataset, CorpusIndex.build(model, dataset)
