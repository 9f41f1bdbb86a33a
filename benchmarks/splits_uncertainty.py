"""How precisely one query split measures a fine-tuning gain (issue 19): paired bootstrap intervals.

Issue 19's labelled target asks for a mean nDCG@10 gain of +0.05 over 5 query splits with every split
at +0.03 or more, and each variant's decision rule asks its selection-split mean to beat the best
recipe by 0.003. This says how large those numbers are against the noise of ~113 held-out queries:
for each split run kept in `--runs-dir` (`training_splits.py --runs-dir`), the per-query change in
nDCG@10 against the base model on that split's held-out queries, its mean (the split's reported
gain), standard error and paired bootstrap 95% interval (10,000 resamples of the queries), and for
every two runs on the same split, the standard error of their per-query difference (how precisely
two recipes are told apart on one split).

Usage: .venv/bin/python benchmarks/splits_uncertainty.py --runs-dir runs/splits-warm \
           --names minilm-cranfield-warm-filtered minilm-cranfield-warm-graded --splits 0 1
Writes benchmarks/results/splits_uncertainty.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import bootstrap_means  # noqa: E402
from training.data.beir import load_beir  # noqa: E402
from training.eval.first_stage import corpus_of  # noqa: E402
from training.eval.retrieval import retrieval_per_query  # noqa: E402
from training.sources import DEFAULT_BASE_MODEL, load_sentence_transformer  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT / "data" / "beir" / "cranfield"
METRIC, FLOOR, RESAMPLES, MAX_TOKENS = "ndcg@10", 0.03, 10_000, 256


def load(source: str):  # type: ignore[no-untyped-def]
    model = load_sentence_transformer(source)
    model.max_seq_length = MAX_TOKENS  # as the Cranfield configs train and evaluate
    return model


def standard_error(changes: np.ndarray) -> float:
    return round(float(changes.std(ddof=1) / np.sqrt(len(changes))), 4)


def interval(changes: np.ndarray, rng: np.random.Generator) -> dict:
    means = bootstrap_means(changes, rng, RESAMPLES)
    return {
        "queries": len(changes),
        "mean": round(float(changes.mean()), 4),
        "se": standard_error(changes),
        "ci95": [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)],
        "p_under_floor": round(float(np.mean(means < FLOOR)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "splits-warm")
    parser.add_argument("--names", nargs="+", required=True, help="run names (the folders are NAME-splitK)")
    parser.add_argument("--splits", nargs="+", type=int, default=[0, 1])
    args = parser.parse_args()
    dataset = load_beir(DATASET)
    base = load(DEFAULT_BASE_MODEL)
    base_corpus = corpus_of(base, dataset)  # the corpus is the same on every split
    rng = np.random.default_rng(0)
    rows, pairs = [], []
    for split in args.splits:
        held_out = dataset.split_queries(split, 0.5)[1]
        before = retrieval_per_query(base, held_out, corpus=base_corpus)
        queries = sorted(before)
        changes: dict[str, np.ndarray] = {}
        for name in args.names:
            folder = args.runs_dir / f"{name}-split{split}" / "model"
            if not folder.is_dir():
                print(f"skipped: no {folder}", flush=True)
                continue
            after = retrieval_per_query(load(str(folder)), held_out)
            changes[name] = np.array([after[q][METRIC] - before[q][METRIC] for q in queries])
            rows.append({"split": split, "run": name, **interval(changes[name], rng)})
            print(rows[-1], flush=True)
        for first, second in itertools.combinations(sorted(changes), 2):
            difference = changes[first] - changes[second]
            pairs.append(
                {
                    "split": split,
                    "runs": [first, second],
                    "mean": round(float(difference.mean()), 4),
                    "se": standard_error(difference),
                }
            )
            print(pairs[-1], flush=True)
    write({"date": time.strftime("%Y-%m-%d %H:%M"), "metric": METRIC, "rows": rows, "pairs": pairs})


def write(report: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "splits_uncertainty.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# How precisely one query split measures a fine-tuning gain (Cranfield, issue 19)",
        "",
        f"Produced by `benchmarks/splits_uncertainty.py`, {report['date']}: per-query change in "
        f"{report['metric']} against the base model on each split's held-out queries; paired bootstrap "
        f"({RESAMPLES:,} resamples of the queries). P(< {FLOOR}): the share of resampled means under "
        "issue 19's per-split floor.",
        "",
        "| split | run | queries | gain (mean) | standard error | 95% interval | P(< floor) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['split']} | {r['run']} | {r['queries']} | {r['mean']:+.4f} | {r['se']:.4f} | "
            f"[{r['ci95'][0]:+.4f}, {r['ci95'][1]:+.4f}] | {r['p_under_floor']:.2f} |"
            for r in report["rows"]
        ),
        "",
        "Two runs on the same split, per-query difference (first - second):",
        "",
        "| split | runs | mean | standard error |",
        "|---|---|---|---|",
        *(
            f"| {p['split']} | {p['runs'][0]} - {p['runs'][1]} | {p['mean']:+.4f} | {p['se']:.4f} |"
            for p in report["pairs"]
        ),
        "",
    ]
    (RESULTS / "splits_uncertainty.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
