"""plots.png: drawn from steps.jsonl and metrics.json for any runner, skipped when there is nothing."""

from __future__ import annotations

import json
from pathlib import Path

from training.plots import _comparable, write_plots
from training.run import RunFolder

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_run_with_steps_and_metrics_gets_plots(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "r")
    with run.step_log() as log:
        for step in range(1, 30):
            log.write({"step": step, "loss": 3 / step, "epoch": 0})  # no lr, no rate: one panel + bars
    run.write_metrics({"before": {"ndcg@10": 0.4, "queries": 113}, "after": {"ndcg@10": 0.45, "queries": 113}})
    assert (run.path / "plots.png").read_bytes()[:8] == PNG


def test_nothing_to_draw_gives_no_file(tmp_path: Path) -> None:
    assert write_plots(tmp_path, {"after": {"ndcg@10": 0.5}}) is None
    assert not (tmp_path / "plots.png").exists()


def test_only_bounded_metrics_present_before_and_after_are_compared() -> None:
    metrics = {
        "before": {"ndcg@10": 0.4, "sts_spearman": 86.7, "recall@10": 0.5, "name": "x"},
        "after": {"ndcg@10": 0.45, "sts_spearman": 85.9, "mrr@10": 0.8, "name": "y"},
    }
    assert _comparable(metrics) == [("ndcg@10", 0.4, 0.45)]
    assert json.dumps(_comparable({})) == "[]"
