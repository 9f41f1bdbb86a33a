"""A uniform soup of two training seeds over query splits: does averaging the weights of two runs
that differ only in `seed` (batch order, dropout, mined-negative draws) gain over either run?
Writes benchmarks/results/seed_soup.{json,md}.

Each split trains the config twice (its own seed, and `--other-seed` under the name
`<name>-seed<other>`; finished split runs in `--runs-dir` are reused), then scores the average of
the two runs' weights (training/interpolation.py at alpha 0.5: start + 0.5 (other - start)) on that
split's held-out queries. No training for the soup itself.

The protocol keeps the reported numbers untuned: the selection splits (0, 1) decide; the report
splits (2..K-1) are trained only with `--report`, once the soup has won on the selection splits.

Run: .venv/bin/python benchmarks/seed_soup.py --config training/configs/cranfield-warm-lr2e5.yaml
         [--other-seed 1] [--splits 5] [--runs-dir runs] [--report]
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
from training.splits import plan_splits, run_splits, split_config  # noqa: E402
from training.trainer import evaluate_interpolated, evaluate_source, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "seed_soup.json"
REPORT = ROOT / "benchmarks" / "results" / "seed_soup.md"
METRICS = ("ndcg@10", "mrr@10", "recall@100", "sts_spearman")


def _runs(config: TrainConfig, count: int, only: str) -> dict[int, Path]:
    """Train (or reuse) `config` on the `only` splits: split seed -> its run folder."""
    plan = plan_splits(config, count, only=only)  # type: ignore[arg-type]
    run_splits(config, plan, lambda c: train(c, show_progress=False), evaluate_source)
    return {seed: Path(config.runs_dir) / split_config(config, seed).name for seed in plan.seeds}


def _soup(config: TrainConfig, seed: int, first: Path, second: Path) -> dict[str, float]:
    """The two runs' averaged weights scored on split `seed`, cached beside the second run."""
    cache = second / f"soup-with-{first.name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    scores = evaluate_interpolated(str(second / "model"), str(first / "model"), 0.5, split_config(config, seed))
    cache.write_text(json.dumps(scores, indent=2))
    return scores


def _rows(config: TrainConfig, other: TrainConfig, count: int, only: str) -> dict[int, dict[str, dict]]:
    """Per split: the base model's scores and those of each seed's run and of their soup."""
    firsts, seconds = _runs(config, count, only), _runs(other, count, only)
    rows = {}
    for seed, first in firsts.items():
        own = json.loads((first / "metrics.json").read_text())
        second = json.loads((seconds[seed] / "metrics.json").read_text())
        rows[seed] = {
            "before": own["before"],
            f"seed {config.seed}": own["after"],
            f"seed {other.seed}": second["after"],
            "soup": _soup(config, seed, first, seconds[seed]),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="training/configs/cranfield-warm-lr2e5.yaml")
    parser.add_argument("--other-seed", type=int, default=1)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--runs-dir", default="runs", help="finished split runs here are reused")
    parser.add_argument("--report", action="store_true", help="also the report splits (after a selection win)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config(Path(args.config), {"runs_dir": args.runs_dir, "export": None})
    if args.other_seed == config.seed:
        parser.error(f"--other-seed {args.other_seed} is the config's own seed")
    other = config.model_copy(update={"seed": args.other_seed, "name": f"{config.name}-seed{args.other_seed}"})
    started = time.perf_counter()
    rows = _rows(config, other, args.splits, "selection")
    if args.report:
        rows |= _rows(config, other, args.splits, "report")
    result = {
        "config": args.config,
        "seeds": [config.seed, other.seed],
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "minutes": round((time.perf_counter() - started) / 60, 1),
        "selection_splits": list(plan_splits(config, args.splits).selection),
        "splits": {str(seed): row for seed, row in sorted(rows.items())},
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    REPORT.write_text(_markdown(result))
    print(REPORT.read_text())


def _markdown(result: dict) -> str:
    columns = [f"seed {s}" for s in result["seeds"]] + ["soup"]
    lines = [
        f"# A uniform soup of two seeds over query splits: `{result['config']}`",
        "",
        f"Produced by `benchmarks/seed_soup.py` on {result['date']} ({result['machine']}; {result['minutes']:.0f} min "
        "in this invocation: split runs and scores finished by an earlier one are reused). Each split trained "
        f"with seeds {result['seeds'][0]} and {result['seeds'][1]} (batch order, dropout, negative draws), and "
        "the average of the two runs' weights scored with no further training. Changes are after − before "
        "(the base model) on each split's held-out queries; selection splits "
        f"{result['selection_splits']} decide.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric} change", "", "| split | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
        deltas: dict[str, list[float]] = {c: [] for c in columns}
        for seed, row in result["splits"].items():
            cells = []
            for column in columns:
                delta = row[column][metric] - row["before"][metric]
                deltas[column].append(delta)
                cells.append(f"{delta:+.4f}")
            lines.append(f"| {seed} | " + " | ".join(cells) + " |")
        lines.append("| mean | " + " | ".join(f"{statistics.fmean(deltas[c]):+.4f}" for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
