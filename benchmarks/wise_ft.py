"""WiSE-FT over query splits: how far toward its fine-tuned weights should a run go? Writes
benchmarks/results/wise_ft.{json,md}.

The config is trained on each split (`training.splits.run_splits`; finished splits in `--runs-dir`
are reused), and each split's fine-tuned model is interpolated back toward the model its training
started from, start + alpha (fine-tuned - start) (training/interpolation.py; alpha > 1 extrapolates),
and scored on that split's held-out queries. No training per alpha: every point is one run's weights.

The protocol keeps the reported numbers untuned: every alpha of the grid (and 1, the run as
trained) is scored on the selection splits (0, 1) only; the alpha with the best mean nDCG@10 change
there is chosen, and then alone scored on the report splits (2..K-1).

Run: .venv/bin/python benchmarks/wise_ft.py --config training/configs/cranfield-warm-lr2e5.yaml
         [--alphas 0.5,0.75] [--splits 5] [--runs-dir runs]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from training.config import TrainConfig, load_config  # noqa: E402
from training.splits import assemble, markdown, plan_splits, run_splits, split_config  # noqa: E402
from training.trainer import evaluate_interpolated, evaluate_source, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "wise_ft.json"
REPORT = ROOT / "benchmarks" / "results" / "wise_ft.md"
METRIC = "ndcg@10"


def _scores(config: TrainConfig, seed: int, metrics: dict, alpha: float) -> dict[str, float]:
    """Split `seed`'s scores after WiSE-FT at `alpha` (1: the run's own "after"), cached beside the
    run so a rerun or a wider grid does not evaluate twice."""
    if alpha == 1.0:
        return metrics["after"]
    split = split_config(config, seed)
    run = Path(config.runs_dir) / split.name
    cache = run / f"wise_ft-{alpha:g}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    start = (metrics.get("warm_start") or {}).get("model") or config.base_model
    scores = evaluate_interpolated(str(run / "model"), start, alpha, split)
    cache.write_text(json.dumps(scores, indent=2))
    return scores


def _at_alpha(config: TrainConfig, runs: dict[int, dict], alpha: float) -> dict[int, dict]:
    """Each split's metrics with "after" replaced by WiSE-FT's at `alpha`."""
    return {seed: {**m, "after": _scores(config, seed, m, alpha)} for seed, m in runs.items()}


def _mean_change(runs: dict[int, dict]) -> float:
    return statistics.fmean(m["after"][METRIC] - m["before"][METRIC] for m in runs.values())


def _train_splits(config: TrainConfig, count: int, only: str) -> tuple[list[int], dict[int, dict]]:
    """Train (or reuse) the `only` splits; each split's metrics.json: before, after, and the start
    model its training began from (`warm_start`)."""
    plan = plan_splits(config, count, only=only)  # type: ignore[arg-type]
    run_splits(config, plan, lambda c: train(c, show_progress=False), evaluate_source)
    folders = {seed: Path(config.runs_dir) / split_config(config, seed).name for seed in plan.seeds}
    return plan.seeds, {seed: json.loads((folder / "metrics.json").read_text()) for seed, folder in folders.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="training/configs/cranfield-warm-lr2e5.yaml")
    parser.add_argument("--alphas", default="0.5,0.75", help="the grid scored on the selection splits (1 is added)")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--runs-dir", default="runs", help="finished split runs here are reused")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(Path(args.config), {"runs_dir": args.runs_dir, "export": None})
    alphas = sorted({float(a) for a in args.alphas.split(",")} | {1.0})
    started = time.perf_counter()

    selection_seeds, selection = _train_splits(config, args.splits, "selection")
    grid = {alpha: _at_alpha(config, selection, alpha) for alpha in alphas}
    chosen = max(alphas, key=lambda a: (round(_mean_change(grid[a]), 6), a))  # a tie keeps more of the fine-tune
    report_seeds, report = _train_splits(config, args.splits, "report")
    plan = plan_splits(config, args.splits)
    combined = assemble(config.name, plan, grid[chosen] | _at_alpha(config, report, chosen))
    plain = assemble(config.name, plan, grid[1.0] | report) if chosen != 1.0 else combined
    result = {
        "config": args.config,
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "selection_splits": selection_seeds,
        "report_splits": report_seeds,
        "grid": {
            str(a): {str(s): m["after"][METRIC] - m["before"][METRIC] for s, m in runs.items()}
            for a, runs in grid.items()
        },
        "chosen_alpha": chosen,
        "chosen": combined,
        "plain": plain,
    }
    RESULTS.write_text(json.dumps(result, indent=2))
    REPORT.write_text(_markdown(result))
    print(REPORT.read_text())


def _markdown(result: dict) -> str:
    lines = [
        f"# WiSE-FT over query splits: `{result['config']}`",
        "",
        f"Produced by `benchmarks/wise_ft.py` on {result['date']} ({result['machine']}; {result['minutes']:.0f} min "
        "in this invocation: split runs and scores finished by an earlier one are reused). Each split's fine-tuned weights moved along the line from the model its training started from, "
        "start + α (fine-tuned − start); α = 1 is the run as trained, α > 1 extrapolates. Changes are after − before (the base model) "
        "on each split's held-out queries.",
        "",
        f"## {METRIC} change on the selection splits {result['selection_splits']}, per α",
        "",
        "| α | " + " | ".join(f"split {s}" for s in result["selection_splits"]) + " | mean |",
        "|---|" + "---|" * (len(result["selection_splits"]) + 1),
    ]
    for alpha, per_split in result["grid"].items():
        values = list(per_split.values())
        cells = " | ".join(f"{v:+.4f}" for v in values)
        lines.append(f"| {float(alpha):g} | {cells} | {statistics.fmean(values):+.4f} |")
    chosen = result["chosen_alpha"]
    lines += [
        "",
        f"Chosen on the selection splits alone: **α = {chosen:g}**; the report splits "
        f"{result['report_splits']} were scored at that α only.",
        "",
        f"## α = {chosen:g}",
        "",
        markdown(result["chosen"]),
    ]
    ndcg = result["chosen"]["all"][METRIC]["splits"]
    lines.append(f"{METRIC} change per split: " + ", ".join(f"{s}: {v:+.4f}" for s, v in ndcg.items()) + ".")
    if chosen != 1.0:
        plain = result["plain"]["all"][METRIC]["splits"]
        lines += [
            "",
            "## α = 1 (the run as trained), the same runs",
            "",
            markdown(result["plain"]),
            f"{METRIC} change per split: " + ", ".join(f"{s}: {v:+.4f}" for s, v in plain.items()) + ".",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
