"""Checkpoint selection on held-out training queries: which queries validate, which weights a run
keeps (the base model's included), and that the choice survives a resumed run."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.training.conftest import train_killed_at_step
from training.cli import app as training_cli
from training.config import ConfigError, TrainConfig, load_config
from training.data.beir import RetrievalDataset, load_beir
from training.sources import load_sentence_transformer
from training.trainer import TrainingData, train
from training.validation import CheckpointSelector


def _raw(tmp_path: Path, tiny_model: Path, data: Path, **extra: object) -> dict:
    return {
        "name": "validated",
        "base_model": str(tiny_model),
        "data": {"format": "beir", "path": str(data)},
        "batch_size": 8,
        "max_steps": 3,
        "max_seq_length": 64,
        "learning_rate": 1e-3,  # large enough that every step moves the weights visibly
        "runs_dir": str(tmp_path / "runs"),
        "eval_sts": None,
        "mining": {"enabled": False},
        "validation": {"fraction": 0.25, "every": 1},
        **extra,
    }


def _config(tmp_path: Path, tiny_model: Path, data: Path, **extra: object) -> TrainConfig:
    return TrainConfig.model_validate(_raw(tmp_path, tiny_model, data, **extra))


def _weights(source: str | Path) -> dict[str, torch.Tensor]:
    return load_sentence_transformer(str(source)).state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _distance_from(base: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    """A validation score that falls as the weights leave the base model's: training that hurts."""

    def score_queries(self: CheckpointSelector, model, corpus=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
        state = model.state_dict()
        distance = sum(float((state[k].float() - base[k].float()).norm()) for k in base)
        return dict.fromkeys(self.dataset.qrels, -distance)

    return score_queries


def test_validation_queries_come_out_of_the_training_half_only(tmp_path: Path, tiny_model: Path, small_beir) -> None:
    config = _config(tmp_path, tiny_model, small_beir)
    data = TrainingData.load(config)
    train_half, held_out = load_beir(small_beir).split_queries(0, 0.5)
    assert data.train_set is not None and data.validation_set is not None and data.eval_set is not None
    trained, validating = set(data.train_set.qrels), set(data.validation_set.qrels)
    assert len(validating) == 5 and len(trained) == 15  # 20 training queries, a quarter validate
    assert not trained & validating and trained | validating == set(train_half.qrels)
    assert set(data.eval_set.qrels) == set(held_out.qrels)  # the held-out half is untouched


def test_a_run_that_never_beats_the_base_model_ships_the_base_model(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _weights(tiny_model)
    monkeypatch.setattr(CheckpointSelector, "score_queries", _distance_from(base))
    result = train(_config(tmp_path, tiny_model, small_beir), show_progress=False)
    validation = result.metrics["validation"]
    assert [h["step"] for h in validation["history"]] == [0, 1, 2, 3]
    assert validation["chosen_step"] == 0 and validation["kept_base"] and validation["queries"] == 5
    assert _same(_weights(result.run_dir / "model"), base)
    assert result.metrics["train_queries"] == 15
    assert result.metrics["after"] == pytest.approx(result.metrics["before"], abs=1e-6)  # the same model


def test_the_run_keeps_the_weights_of_its_best_validation_step(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, torch.Tensor]] = []
    scripted = iter([0.30, 0.35, 0.50, 0.40])  # steps 0, 1, 2, 3: the best is after step 2

    def score_queries(self: CheckpointSelector, model, corpus=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return dict.fromkeys(self.dataset.qrels, next(scripted))  # every query gains alike: no noise

    monkeypatch.setattr(CheckpointSelector, "score_queries", score_queries)
    result = train(_config(tmp_path, tiny_model, small_beir), show_progress=False)
    assert result.metrics["validation"]["chosen_step"] == 2 and not result.metrics["validation"]["kept_base"]
    saved = _weights(result.run_dir / "model")
    assert _same(saved, seen[2])
    assert not _same(saved, seen[3]) and not _same(saved, seen[0])  # neither the last nor the base weights


def test_a_resumed_run_selects_over_the_steps_before_the_kill_too(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _weights(tiny_model)
    monkeypatch.setattr(CheckpointSelector, "score_queries", _distance_from(base))
    config = _config(tmp_path, tiny_model, small_beir, max_steps=6, checkpoint_every=2, validation={"every": 2})
    train_killed_at_step(config, 5, monkeypatch)
    result = CliRunner().invoke(training_cli, ["train", "--resume", str(tmp_path / "runs" / "validated")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "runs" / "validated" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["validation"]["history"]] == [0, 2, 4, 6]
    assert metrics["validation"]["chosen_step"] == 0  # the base model, scored before the kill
    assert _same(_weights(tmp_path / "runs" / "validated" / "model"), base)


def test_real_validation_scores_are_the_retrieval_metric_of_the_validation_queries(
    tmp_path: Path, tiny_model: Path, small_beir: Path
) -> None:
    from training.eval.retrieval import evaluate_retrieval

    config = _config(tmp_path, tiny_model, small_beir, max_steps=2, validation={"every": 1, "metric": "mrr@10"})
    result = train(config, show_progress=False)
    validation = result.metrics["validation"]
    base = load_sentence_transformer(str(tiny_model))
    base_score = evaluate_retrieval(base, TrainingData.load(config).validation_set)["mrr@10"]
    assert validation["metric"] == "mrr@10"
    assert validation["history"][0]["mrr@10"] == pytest.approx(base_score, abs=1e-5)
    eligible = [h for h in validation["history"] if h["step"] == 0 or h["gain"] > h["stderr"]]
    best = max(eligible, key=lambda h: h["mrr@10"])  # the first of equal scores
    assert validation["chosen_step"] == best["step"]


def _selector_over(
    gains_by_step: list[list[float]],
    min_standard_errors: float = 1.0,
    significance: float | None = None,
    planned_steps: int | None = None,
) -> CheckpointSelector:
    """A selector fed per-query scores (base 0.5 + the given gains) at steps 0, 1, 2, ...; it plans
    for `planned_steps` steps (default: the steps fed), each one scored."""
    queries = [f"q{i}" for i in range(len(gains_by_step[0]))]
    dataset = RetrievalDataset({}, dict.fromkeys(queries, "text"), {q: {"d": 1} for q in queries})
    selector = CheckpointSelector(dataset, "ndcg@10", every=1, min_standard_errors=min_standard_errors)
    selector.significance = significance
    selector.plan(planned_steps or len(gains_by_step) - 1)
    feed = iter(gains_by_step)
    selector.score_queries = lambda model, corpus=None: {q: 0.5 + g for q, g in zip(queries, next(feed), strict=True)}
    model = torch.nn.Linear(2, 2)
    for step in range(len(gains_by_step)):
        selector.observe(model, step)
    return selector


def test_a_gain_within_the_noise_of_few_queries_keeps_the_base_model() -> None:
    noisy = [[0.0] * 6, [0.30, -0.25, 0.20, -0.20, 0.25, -0.24]]  # mean +0.01, standard error ~0.1
    assert _selector_over(noisy, min_standard_errors=1.0).best_step == 0
    assert _selector_over(noisy, min_standard_errors=0.0).best_step == 1  # any gain, noise included
    steady = [[0.0] * 6, [0.02, 0.03, 0.02, 0.04, 0.03, 0.02]]  # mean +0.027, every query gains
    selector = _selector_over(steady, min_standard_errors=1.0)
    assert selector.best_step == 1 and selector.history[1]["gain"] == pytest.approx(0.0267, abs=1e-4)
    mixed = [[0.0] * 6, [0.02] * 6, [0.2, -0.1, 0.2, -0.1, 0.2, -0.1]]  # higher mean, but noisy
    assert _selector_over(mixed, min_standard_errors=1.0).best_step == 1


def test_the_significance_bar_rises_with_the_checkpoints_compared() -> None:
    # 6 queries, mean gain 0.03, paired t statistic 2.24: one checkpoint passes a one-sided test at 5%
    # (t_5 critical 2.015); as the best of 4 it must pass at 1.25% (critical 3.16) and does not.
    gains = [0.03 + d for d in (0.03, -0.03, 0.03, -0.03, 0.03, -0.03)]
    t_statistic = statistics.fmean(gains) / (statistics.stdev(gains) / math.sqrt(6))
    assert t_statistic == pytest.approx(2.236, abs=1e-3)
    alone = _selector_over([[0.0] * 6, gains], significance=0.05)
    assert alone.comparisons == 1 and alone.critical_value(6) == pytest.approx(2.015, abs=1e-3)
    assert alone.best_step == 1
    among_four = _selector_over([[0.0] * 6, gains], significance=0.05, planned_steps=4)
    assert among_four.comparisons == 4 and among_four.critical_value(6) == pytest.approx(3.163, abs=1e-3)
    assert among_four.best_step == 0 and among_four.summary()["kept_base"]
    assert _selector_over([[0.0] * 6, gains], min_standard_errors=1.0, planned_steps=4).best_step == 1
    clear = [0.05, 0.06, 0.05, 0.07, 0.06, 0.05]  # every query gains: t ~ 16
    assert _selector_over([[0.0] * 6, clear], significance=0.05, planned_steps=4).best_step == 1


def test_a_t_test_needs_two_validation_queries() -> None:
    selector = _selector_over([[0.0], [0.5]], significance=0.05)
    assert selector.best_step == 0 and selector.summary()["critical_value"] is None
    assert json.loads(json.dumps(selector.summary(), allow_nan=False))["kept_base"]


def test_planned_comparisons_count_every_scored_step_after_the_base() -> None:
    selector = _selector_over([[0.0] * 3], significance=0.05)
    selector.every = 10
    for total, expected in ((40, 4), (45, 5), (5, 1), (10, 1)):
        selector.plan(total)
        assert selector.comparisons == expected, total


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"validation": {"fraction": 0.99}}, "validation.fraction: 0.99 leaves no training query"),
        ({"validation": {"fraction": 1e-17}}, "leaves no validation query"),
        ({"validation": {"every": 0}}, "validation.every"),
        ({"validation": {"metric": "bleu"}}, "validation.metric"),
        ({"validation": {"min_standard_errors": -1}}, "validation.min_standard_errors"),
        ({"validation": {"significance": 0}}, "validation.significance"),
        ({"validation": {"significance": 1.5}}, "validation.significance"),
    ],
)
def test_bad_validation_settings_stop_before_training(
    tmp_path: Path, tiny_model: Path, small_beir: Path, extra: dict, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, tiny_model, small_beir, **extra)))
    with pytest.raises(ConfigError, match=message):
        TrainingData.load(load_config(path))
    assert not (tmp_path / "runs").exists()


def test_validation_needs_judged_queries(tmp_path: Path, tiny_model: Path) -> None:
    from tests.conftest import STS_DEV

    path = tmp_path / "sts.yaml"
    raw = _raw(tmp_path, tiny_model, STS_DEV, **{"loss": {"name": "cosent"}})
    raw["data"] = {"format": "sts", "path": str(STS_DEV), "query_split": None}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="validation needs judged queries"):
        load_config(path)


@pytest.mark.parametrize(("bar", "chosen"), [({"min_standard_errors": 1.0}, 2), ({"significance": 0.05}, 0)])
def test_a_trained_run_tests_its_best_checkpoint_against_the_checkpoints_it_compared(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch, bar: dict, chosen: int
) -> None:
    # 5 validation queries; step 2 gains 0.04 on average with a paired t statistic of 2.98: past one
    # standard error, and past one test at 5% (t_4 critical 2.13), not past 5% shared by 3 checkpoints
    # (critical 3.19).
    noisy = [0.04 + d for d in (0.03, -0.03, 0.03, -0.03, 0.0)]
    scripted = iter([[0.0] * 5, [0.01, -0.01, 0.01, -0.01, 0.0], noisy, [-0.01] * 5])  # steps 0-3

    def score_queries(self: CheckpointSelector, model, corpus=None) -> dict[str, float]:  # type: ignore[no-untyped-def]
        return {q: 0.5 + g for q, g in zip(sorted(self.dataset.qrels), next(scripted), strict=True)}

    monkeypatch.setattr(CheckpointSelector, "score_queries", score_queries)
    config = _config(tmp_path, tiny_model, small_beir, validation={"fraction": 0.25, "every": 1, **bar})
    validation = train(config, show_progress=False).metrics["validation"]
    assert validation["comparisons"] == 3 and validation["chosen_step"] == chosen
    if "significance" in bar:
        assert validation["critical_value"] == pytest.approx(3.186, abs=1e-3)


def test_the_base_model_encodes_the_corpus_once_and_the_kept_weights_are_not_encoded_again(
    tmp_path: Path, tiny_model: Path, small_beir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.eval.first_stage import CorpusIndex
    from training.eval.retrieval import evaluate_retrieval

    builds: list[int] = []
    real_build = CorpusIndex.build.__func__  # type: ignore[attr-defined]

    def counted(cls, model, dataset):  # type: ignore[no-untyped-def]
        builds.append(len(dataset.corpus))
        return real_build(cls, model, dataset)

    monkeypatch.setattr(CorpusIndex, "build", classmethod(counted))
    config = _config(tmp_path, tiny_model, small_beir, mining={"enabled": True, "rank_window": [1, 10]})
    result = train(config, show_progress=False)
    # the base model: evaluated, mined with and validated on one encoding; steps 1-3 one each; the
    # final evaluation reuses the kept step's
    assert len(builds) == 1 + 3
    monkeypatch.undo()
    saved = load_sentence_transformer(str(result.run_dir / "model"))
    fresh = evaluate_retrieval(saved, TrainingData.load(config).eval_set)
    assert {k: result.metrics["after"][k] for k in fresh} == pytest.approx(fresh, abs=1e-5)
    assert result.metrics["before"] == pytest.approx(
        evaluate_retrieval(load_sentence_transformer(str(tiny_model)), TrainingData.load(config).eval_set), abs=1e-5
    )
