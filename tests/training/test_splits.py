"""eval-splits: one config over K query splits, deltas summarised; bad plans stop before training."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import make_tiny_sentence_transformer
from training.cli import app as training_cli
from training.config import ConfigError, TrainConfig
from training.splits import SplitPlan, assemble, metric_deltas, plan_splits, run_splits, summarize
from training.trainer import evaluate_source, train


def _config(tmp_path: Path, model: Path, data: Path, **extra: object) -> dict:
    return {
        "name": "sp",
        "base_model": str(model),
        "data": {"format": "beir", "path": str(data), "query_split": {"seed": 0, "train_fraction": 0.5}},
        "batch_size": 8,
        "max_steps": 2,
        "max_seq_length": 32,
        "runs_dir": str(tmp_path / "runs"),
        "eval_sts": None,
        "mining": {"enabled": False},
        "checkpoint_every": 0,
        **extra,
    }


def test_summary_is_mean_std_and_min_of_each_metric_s_change() -> None:
    assert metric_deltas({"before": {"ndcg@10": 0.4, "queries": 20}, "after": {"ndcg@10": 0.45, "queries": 20}}) == {
        "ndcg@10": pytest.approx(0.05)
    }
    summary = summarize({0: {"ndcg@10": 0.05}, 1: {"ndcg@10": 0.01}, 2: {"ndcg@10": 0.03}})["ndcg@10"]
    assert summary["mean"] == pytest.approx(0.03) and summary["min"] == pytest.approx(0.01)
    assert summary["std"] == pytest.approx(statistics.stdev([0.05, 0.01, 0.03]))
    assert summary["splits"] == {0: 0.05, 1: 0.01, 2: 0.03}


def test_eval_splits_runs_each_split_and_reports_selection_apart(tmp_path: Path, small_beir: Path) -> None:
    model = make_tiny_sentence_transformer(tmp_path / "tiny")
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(_config(tmp_path, model, small_beir)))
    result = CliRunner().invoke(training_cli, ["eval-splits", "--config", str(config_path), "--splits", "3"])
    assert result.exit_code == 0, result.output
    assert "ndcg@10" in result.output and "selection [0, 1]" in result.output and "report [2]" in result.output
    summary = json.loads((tmp_path / "runs" / "sp-splits.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["report_splits"] == [2]
    for seed in (0, 1, 2):  # each split trained on its own queries and scored on its own held-out half
        metrics = json.loads((tmp_path / "runs" / f"sp-split{seed}" / "metrics.json").read_text())
        expected = metrics["after"]["ndcg@10"] - metrics["before"]["ndcg@10"]
        assert summary["all"]["ndcg@10"]["splits"][str(seed)] == pytest.approx(expected)
    held_out = [json.loads((tmp_path / "runs" / f"sp-split{s}" / "metrics.json").read_text()) for s in (0, 1)]
    assert held_out[0]["before"] != held_out[1]["before"]  # different held-out queries
    assert summary["report"]["ndcg@10"]["mean"] == pytest.approx(summary["all"]["ndcg@10"]["splits"]["2"])
    assert summary["chosen_steps"] == {} and summary["synthetic_lists"] == {}  # neither in this config


def test_splits_record_the_step_each_validated_run_kept() -> None:
    runs = {
        0: {"before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.5}, "validation": {"chosen_step": 0}},
        1: {"before": {"ndcg@10": 0.5}, "after": {"ndcg@10": 0.6}, "validation": {"chosen_step": 20}},
    }
    result = assemble("v", SplitPlan([0, 1], [0]), runs)
    assert result["chosen_steps"] == {0: 0, 1: 20}
    synthetic = {"queries": 2, "documents": 5, "dropped": 1, "generated": 6, "seconds": 9.0, "lists_per_minute": 8.0}
    runs[1]["synthetic_lists"] = synthetic
    assert assemble("v", SplitPlan([0, 1], [0]), runs)["synthetic_lists"] == {1: synthetic}
    assert result["all"]["ndcg@10"]["splits"] == {0: 0.0, 1: pytest.approx(0.1)}


def test_bad_split_plans_stop_with_one_line_before_training(tmp_path: Path, small_beir: Path) -> None:
    config = TrainConfig.model_validate(_config(tmp_path, tmp_path / "no-model", small_beir))
    with pytest.raises(ConfigError, match="at least 2 splits"):
        plan_splits(config, 1)
    starved = config.model_copy(update={"data": config.data.model_copy(update={"query_split": None})})
    with pytest.raises(ConfigError, match=r"needs data\.format beir \(or corpus\) with a query_split"):
        plan_splits(starved, 3)
    tiny_fraction = config.data.query_split.model_copy(update={"train_fraction": 0.01})  # type: ignore[union-attr]
    no_train = config.model_copy(update={"data": config.data.model_copy(update={"query_split": tiny_fraction})})
    with pytest.raises(ConfigError, match=r"train_fraction: 0\.01 leaves no training query in split 0"):
        plan_splits(no_train, 2)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tmp_path / "no-model", small_beir)))
    result = CliRunner().invoke(training_cli, ["eval-splits", "--config", str(path), "--splits", "1"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_the_selection_or_the_report_splits_alone(tmp_path: Path, small_beir: Path) -> None:
    config = TrainConfig.model_validate(_config(tmp_path, tmp_path / "no-model", small_beir))
    assert plan_splits(config, 5, only="selection") == SplitPlan([0, 1], [0, 1])
    report = plan_splits(config, 5, only="report")
    assert report == SplitPlan([2, 3, 4], []) and report.report == [2, 3, 4]
    assert plan_splits(config, 3) == SplitPlan([0, 1, 2], [0, 1])
    with pytest.raises(ConfigError, match=r"2 splits leave no report split \(selection splits: \[0, 1\]\)"):
        plan_splits(config, 2, only="report")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, tmp_path / "no-model", small_beir)))
    result = CliRunner().invoke(training_cli, ["eval-splits", "--config", str(path), "--only", "some"])
    assert result.exit_code == 2 and "--only: one of all, selection, report (got 'some')" in result.output


def test_a_corpus_config_is_trained_once_and_scored_on_every_split(tmp_path: Path, small_beir: Path) -> None:
    """Pseudo-queries never see a real query: one training run, each split's held-out half scored
    by the base and the trained model (the same scores a fresh evaluation of that split gives)."""
    model = make_tiny_sentence_transformer(tmp_path / "tiny")
    data = {"format": "corpus", "path": str(small_beir), "pseudo_queries": "first_sentences"}
    config = TrainConfig.model_validate(
        {**_config(tmp_path, model, small_beir), "data": {**data, "query_split": {"seed": 0}}}
    )
    trained: list[str] = []

    def train_once(run_config: TrainConfig):  # type: ignore[no-untyped-def]
        trained.append(run_config.name)
        return train(run_config, show_progress=False)

    result = run_splits(config, plan_splits(config, 3), train_once, evaluate_source)
    assert trained == ["sp-split0"] and not (tmp_path / "runs" / "sp-split1").exists()
    model_dir = tmp_path / "runs" / "sp-split0" / "model"
    for seed in (1, 2):
        split = config.data.query_split.model_copy(update={"seed": seed})  # type: ignore[union-attr]
        split_config = config.model_copy(update={"data": config.data.model_copy(update={"query_split": split})})
        before, after = evaluate_source(str(model), split_config), evaluate_source(str(model_dir), split_config)
        assert result["before"][seed] == before and result["after"][seed] == after
        assert result["all"]["ndcg@10"]["splits"][seed] == pytest.approx(after["ndcg@10"] - before["ndcg@10"])
    assert result["before"][1] != result["before"][2]  # different held-out queries


def test_a_stopped_run_goes_on_at_its_first_unfinished_split(tmp_path: Path, small_beir: Path) -> None:
    """Splits whose run finished with the same config are reused (also from a moved runs folder);
    a changed config trains again."""
    model = make_tiny_sentence_transformer(tmp_path / "tiny")
    config = TrainConfig.model_validate(_config(tmp_path, model, small_beir))
    trained: list[str] = []

    def counted(run_config: TrainConfig):  # type: ignore[no-untyped-def]
        trained.append(run_config.name)
        return train(run_config, show_progress=False)

    first = run_splits(config, plan_splits(config, 2), counted)
    (tmp_path / "runs").rename(tmp_path / "moved")
    moved = config.model_copy(update={"runs_dir": tmp_path / "moved"})
    more = run_splits(moved, plan_splits(moved, 3), counted)
    assert trained == ["sp-split0", "sp-split1", "sp-split2"]  # splits 0 and 1 were not trained again
    assert more["after"][0] == first["after"][0] and more["after"][1] == first["after"][1]
    run_splits(moved.model_copy(update={"max_steps": 1}), plan_splits(moved, 2), counted)
    assert trained[3:] == ["sp-split0", "sp-split1"]
    # a run recorded before a config key existed (the key at its default) is the same run
    recorded = tmp_path / "moved" / "sp-split2" / "config.yaml"
    raw = yaml.safe_load(recorded.read_text())
    assert raw.pop("synthetic_lists") is None
    recorded.write_text(yaml.safe_dump(raw))
    run_splits(moved, plan_splits(moved, 3), counted)
    assert trained[5:] == ["sp-split0", "sp-split1"]  # split 2 reused (0 and 1 hold the max_steps 1 runs)
    recorded.write_text(yaml.safe_dump({**raw, "learning_rat": 1.0}))  # a key no version reads: not reused
    run_splits(moved, plan_splits(moved, 3), counted)
    assert trained[7:] == ["sp-split2"]
    # metrics cut short (killed as it wrote them), or not UTF-8: not finished, trained again (no traceback)
    (tmp_path / "moved" / "sp-split1" / "metrics.json").write_text('{"after": {"ndcg@10": 0.4')
    (tmp_path / "moved" / "sp-split2" / "metrics.json").write_bytes(b"\xff\xfe")
    run_splits(moved, plan_splits(moved, 3), counted)
    assert trained[8:] == ["sp-split1", "sp-split2"]
