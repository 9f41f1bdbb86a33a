"""Does fine-tuning help on every query split, or on the one it was tuned on? Writes
benchmarks/results/training_splits.{json,md} and the "Splits" section of benchmarks/training.md.

Each config runs through `training.splits` (the code behind `python -m training eval-splits`): K
query splits (seeds 0..K-1, held-out half of each), every metric's change after - before as mean ±
std and minimum; the selection splits (0, 1) are where settings may be tuned, the report splits
(2..K-1) are reported apart. Configs default to the Cranfield default.

Run: .venv/bin/python benchmarks/training_splits.py [--configs training/configs/cranfield.yaml] [--splits 5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from report import splice_section  # noqa: E402  # benchmarks/report.py

from training.config import load_config  # noqa: E402
from training.splits import DEFAULT_SELECTION, SplitPlan, assemble, markdown, plan_splits, run_splits  # noqa: E402
from training.trainer import evaluate_source, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "training_splits.json"
REPORT = ROOT / "benchmarks" / "results" / "training_splits.md"
TRAINING_REPORT = ROOT / "benchmarks" / "training.md"
TARGET_SPLITS = 5  # issue 19 judges a config over five query splits
BEGIN, END = "<!-- splits: benchmarks/training_splits.py -->", "<!-- /splits -->"


def targets(config_path: str, result: dict) -> str | None:
    """Issue 19's target line for this config's data (None for data it sets none for): met or not
    over TARGET_SPLITS splits; over fewer, not met only when a split already broke a per-split
    floor (no later split can mend that), else not judged yet."""
    ndcg, sts = result["all"].get("ndcg@10"), result["all"].get("sts_spearman")
    if not ndcg:
        return None
    config = load_config(Path(config_path))
    if "cranfield" in str(config.data.path) and config.data.format == "corpus":
        text, mean_ok, floors_ok = "Cranfield, no labels: mean Δ nDCG@10 ≥ +0.02", ndcg["mean"] >= 0.02, True
    elif "cranfield" in str(config.data.path):
        text = "Labelled Cranfield: mean Δ nDCG@10 ≥ +0.05 and every split ≥ +0.03; STS-B Spearman drop ≤ 1 point"
        mean_ok, floors_ok = ndcg["mean"] >= 0.05, ndcg["min"] >= 0.03 and bool(sts) and sts["min"] >= -1.0
    elif "msmarco" in str(config.data.path):
        text = "MS MARCO: mean Δ nDCG@10 ≥ 0, no split below -0.01"
        mean_ok, floors_ok = ndcg["mean"] >= 0, ndcg["min"] >= -0.01
    else:
        return None
    finished = len(ndcg["splits"])
    if finished >= TARGET_SPLITS or not floors_ok:
        verdict = "met" if mean_ok and floors_ok else "not met"
    else:
        lean = "within" if mean_ok else "short of"
        verdict = f"not judged, {finished} of {TARGET_SPLITS} splits run (the mean so far {lean} it)"
    return f"Target ({text}): {verdict}."


def _section(results: dict) -> str:
    lines = [
        BEGIN,
        "## Splits: the gain over query splits (issue 19)",
        "",
        f"{results['machine']}. Command: `.venv/bin/python benchmarks/training_splits.py --configs CONFIG "
        "--splits K`. Changes are after - before on each split's held-out queries. A config trained on "
        "pseudo-queries alone (`data.format: corpus`) never sees a real query, so it is trained once and "
        "scored on every split's held-out half.",
        "",
    ]
    for entry in results["configs"]:
        when = f", {entry['date']}" if "date" in entry else ""
        lines += [f"### `{entry['config']}` ({entry['minutes']:.0f} min{when})", "", entry["table"]]
        ndcg = entry["result"]["all"].get("ndcg@10")
        if ndcg:
            per_split = ", ".join(f"{seed}: {v:+.4f}" for seed, v in ndcg["splits"].items())
            lines.append(f"nDCG@10 change per split: {per_split}.")
        chosen = entry["result"].get("chosen_steps")
        if chosen:
            steps = ", ".join(f"{seed}: {step}" for seed, step in chosen.items())
            lines.append(f"Validation kept the weights after step (0 = the base model) per split: {steps}.")
        synthetic = entry["result"].get("synthetic_lists")
        if synthetic:
            lines.append(f"Synthetic lists per split: {synthetic_line(synthetic)}.")
        target = targets(entry["config"], entry["result"])
        if target:
            lines.append(target)
        lines.append("")
    lines += [END, ""]
    return "\n".join(lines)


def synthetic_line(per_split: dict) -> str:
    """Per split: lists and documents synthesised, and the generator's pace where it ran (a split
    whose lists all came from the cache generated nothing)."""
    parts = []
    for seed, stats in per_split.items():
        pace = (
            f", {stats['generated']} generations at {stats['lists_per_minute']:.1f} lists/min"
            if stats.get("lists_per_minute")
            else ", all from the cache"
        )
        parts.append(
            f"{seed}: {stats['queries']} queries, {stats['documents']} documents kept ({stats['dropped']} too short){pace}"
        )
    return "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="training/configs/cranfield.yaml")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument(
        "--summarize-runs", type=Path, help="a runs folder of a stopped run: report the splits it finished"
    )
    parser.add_argument(
        "--runs-dir", type=Path, help="keep the runs here (default: a temporary folder); finished splits are reused"
    )
    args = parser.parse_args()
    # as `python -m training` does: a long split run shows its stages (mining, synthetic lists, validation)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.summarize_runs:
        _write([_finished(args.summarize_runs, Path(p), args.splits) for p in args.configs.split(",")], args.splits)
        return
    entries = []
    with tempfile.TemporaryDirectory() as temporary:
        runs = str(args.runs_dir or temporary)
        for path in args.configs.split(","):
            config = load_config(Path(path), {"runs_dir": runs, "export": None})
            plan = plan_splits(config, args.splits)
            started = time.perf_counter()
            result = run_splits(config, plan, lambda c: train(c, show_progress=False), evaluate_source)
            minutes = (time.perf_counter() - started) / 60
            table = markdown(result)
            entries.append({"config": path, "minutes": minutes, "date": _now(), "result": result, "table": table})
            print(table, flush=True)
    _write(entries, args.splits)


def _finished(runs: Path, config_path: Path, count: int) -> dict:
    """The entry for the splits of `config_path` that have a metrics.json under `runs`."""
    config = load_config(config_path)
    metrics = {}
    for seed in range(count):
        path = runs / f"{config.name}-split{seed}" / "metrics.json"
        if path.is_file():
            metrics[seed] = json.loads(path.read_text())
    plan = SplitPlan(sorted(metrics), [s for s in DEFAULT_SELECTION if s in metrics])
    result = assemble(config.name, plan, metrics)
    minutes = sum(m.get("total_seconds", 0) for m in metrics.values()) / 60
    note = f"{len(metrics)} of {count} splits finished (the run was stopped)." if len(metrics) < count else ""
    table = markdown(result) + "\n" + note
    return {"config": str(config_path), "minutes": minutes, "date": _now(), "result": result, "table": table}


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


def _write(entries: list[dict], splits: int) -> None:
    """Each config's entry replaces its earlier one; the other configs' entries are kept."""
    kept = json.loads(RESULTS.read_text())["configs"] if RESULTS.is_file() else []
    fresh = {e["config"] for e in entries}
    results = {
        "machine": f"{os.cpu_count()} cores, {platform.machine()}",
        "date": _now(),
        "splits": splits,
        "configs": [e for e in kept if e["config"] not in fresh] + entries,
    }
    RESULTS.write_text(json.dumps(results, indent=2))
    section = _section(results)
    REPORT.write_text(section)
    splice_section(TRAINING_REPORT, BEGIN, END, section)


if __name__ == "__main__":
    main()
