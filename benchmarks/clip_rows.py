"""The skeleton of the clip benchmarks that put rows beside the served recipe on a split, each row
the served recipe (`clip_training.served_config`) with one change, all trained in the same run and
scored as served (`clip_ensemble.score`: text->image R@1 plain and hubness-corrected, COCO-mini,
emoji image->image). `clip_prompts.py`, `clip_names.py` and `clip_losses.py` each give their rows
and call `main`; each wrote this decision rule into its docstring before its first run (git keeps
those versions):

On split 0 (where every clip choice is made), all rows trained in the same run. A row goes on only
if the sum of hubness-corrected emoji names R@1 and hubness-corrected OpenClipart R@1 beats the
served row's by more than 0.005, with emoji image->image no more than 0.01 lower and COCO-mini
caption->photo R@1 (plain and corrected) no more than 0.005 lower; of passing rows the one with the
larger sum goes on. It then runs on the report splits 1-3 beside the served row, reported whatever
it shows, and is served only if the splits 1-3 mean passes the same test.

From 2026-12-07 on (after `clip_mixed_losses.py`, whose served recipe passed on plain cosines and
lost 0.011 of image->image as search serves it), image->image is held to the bar both plain and
hubness-corrected (image queries' CSLS, as search applies it): neither more than 0.01 lower.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_ensemble import score, split_tables  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from benchmarks.report import record_runs  # noqa: E402
from training.clip_training import fit_members, prepare  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SELECTION_SPLIT = 0  # every clip choice is made on split 0; --splits 1 2 3 reports


def run_rows(bench: str, split: int, rows: dict[str, dict], labels: list[str]) -> dict[str, dict[str, float]]:
    """Each of `labels` (the first of `rows` always, it is the served row) trained on `split` and
    scored: {label: metrics}."""
    served = next(iter(rows))
    scores = {}
    for label in [served, *(r for r in labels if r != served)]:
        config = served_config(bench, split, **rows[label])
        data = prepare(config)
        head, _ = fit_members(
            config, data, RunFolder(Path("/tmp") / f"tessera-clip-{bench}", f"s{split}-{len(scores)}")
        )
        scores[label] = score(head, data, config)
        print(split, label, json.dumps(scores[label]), flush=True)
    return scores


def main(doc: str, bench: str, title: str, rows: dict[str, dict]) -> None:
    """The command line: `--splits` (default the selection split) and `--rows` (default all);
    writes results/clip_<bench>.json and .md, every split run so far merged."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--splits", type=int, nargs="+", default=[SELECTION_SPLIT])
    parser.add_argument("--rows", nargs="+", default=list(rows), choices=list(rows))
    args = parser.parse_args()
    torch.set_num_threads(2)

    def write_markdown(report: dict) -> None:
        (RESULTS / f"clip_{bench}.md").write_text(split_tables(report, title))

    def run(split: int) -> dict[str, dict[str, float]]:
        return run_rows(bench, split, rows, args.rows)

    record_runs(RESULTS / f"clip_{bench}.json", "splits", args.splits, run, write_markdown)
