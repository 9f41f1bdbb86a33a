"""Ensembles of the clip head's learned map: K maps trained apart (one seed each), averaged.

Each split trains the served recipe (`benchmarks/clip_training.py`'s served row, transparent drawings
trimmed as `training/configs/serve-clip.yaml`) `--members` times (default five, as served) on cached
features, member m from seed `member_seed(split, m)`, and scores one member alone, the mean of the
members scored alone (what one training run gives on average), and ensembles of the first 2, 3, 5, ...
members
(`ClipImageHead.from_members`: each member's turn as a unit vector, averaged, then bounded to the
recipe's length). Text->image Recall@1 is reported plain and with the served hubness correction
(`app/inference/hubness.py`, the bank of the split's training captions, top 50 re-ranked), beside
emoji image->image across styles and COCO-mini caption->photo R@5. Splits 1-3 are the report (as
clip_training.md); split 0, where the choice was made, is listed apart.

Larger ensembles (rule written 2026-12-05, before `--members 12 --selection-only` ran): on split 0
an ensemble of k > 5 maps replaces the served five only if its hubness-corrected emoji name->image
R@1 gains at least 0.005 over the five's, and none of the other metrics (emoji R@1 plain,
OpenClipart R@1 plain and corrected, R@10, COCO-mini R@1 plain and corrected, R@5, emoji
image->image R@1) falls more than 0.005 below the five's. Of the passing sizes the best on that
metric is chosen (ties: the smaller k); it then runs on splits 1-3 with `--members k`, and is
served only if its report-split mean gains there too.
Result (2026-12-05, split 0, 12 maps trained; the printout, saved as
results/clip_ensemble_selection12.json): no size passed.
Hubness-corrected emoji names R@1 by ensemble size 5 / 8 / 10 / 12: 0.3600 / 0.3525 / 0.3600 /
0.3525 (OpenClipart R@1 0.2761 / 0.2781 / 0.2702 / 0.2702, corrected 0.2899 / 0.2781 / 0.2761 /
0.2801; emoji image->image 0.730 / 0.730 / 0.725 / 0.7225): past five maps the average stops
gaining, so the served five stay and splits 1-3 were not run.

Usage: .venv/bin/python benchmarks/clip_ensemble.py [--members 5] [--selection-only]  (needs `make
model image-data`; ~2 min a split for five maps once features are cached). `--selection-only` scores
split 0 alone and writes nothing: a larger ensemble is chosen there before splits 1-3 are run.
Writes benchmarks/results/clip_ensemble.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.services.search import HUB_CANDIDATES  # noqa: E402
from benchmarks.clip_hubness import recall_at_1, top_candidates_corrected  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from benchmarks.report import split_row  # noqa: E402
from training.clip_training import (  # noqa: E402
    ClipData,
    _vectors,
    evaluate,
    hub_correction,
    image_hub_correction,
    prepare,
    train_members,
)
from training.config import ClipTrainConfig  # noqa: E402
from training.models.clip import ClipImageHead  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REPORT_SPLITS, SELECTION_SPLIT = (1, 2, 3), 0
MEMBERS = 5  # as served (serve-clip.yaml's residual_members); --members trains more to compare
METRICS = [
    "emoji text->image recall@1",
    "emoji text->image recall@1, hubness-corrected",
    "openclipart text->image recall@1",
    "openclipart text->image recall@1, hubness-corrected",
    "openclipart text->image recall@10",
    "coco-mini text->image recall@1",
    "coco-mini text->image recall@1, hubness-corrected",
    "coco-mini text->image recall@5",
    "emoji image->image recall@1",
    "emoji image->image recall@1, hubness-corrected",  # scored from 2026-12-07 on
]
# The columns a per-split table of heads shows, by short name (clip_bagging.py, clip_prompts.py).
SHORT = {
    "emoji text->image recall@1, hubness-corrected": "emoji names R@1 corr.",
    "openclipart text->image recall@1, hubness-corrected": "clip art R@1 corr.",
    "openclipart text->image recall@10": "clip art R@10",
    "coco-mini text->image recall@1": "COCO R@1",
    "coco-mini text->image recall@1, hubness-corrected": "COCO R@1 corr.",
    "emoji image->image recall@1": "emoji img->img R@1",
    "emoji image->image recall@1, hubness-corrected": "emoji img->img R@1 corr.",
    "emoji text->image recall@1": "emoji names R@1",
}

assert set(SHORT) <= set(METRICS)


def split_tables(report: dict, title: str) -> str:
    """Markdown: `title`, then one table per split of `report["splits"]` ({split: {head: metrics}}),
    a row per head and a column per SHORT metric."""
    lines = [f"# {title}", "", f"Measured {report['measured']}. The decision rule is in the script's docstring.", ""]
    for split, rows in sorted(report["splits"].items(), key=lambda kv: int(kv[0])):
        lines += [f"## split {split}", "", "| head | " + " | ".join(SHORT.values()) + " |"]
        lines.append("|---" * (len(SHORT) + 1) + "|")
        lines += [
            f"| {name} | " + " | ".join(f"{row[m]:.4f}" if m in row else "-" for m in SHORT) + " |"
            for name, row in rows.items()
        ]  # "-": a metric scored only by runs after the row's
        lines.append("")
    return "\n".join(lines)


def score(head: ClipImageHead, data: ClipData, config: ClipTrainConfig) -> dict[str, float]:
    """The METRICS of one head: evaluate()'s, and text->image and emoji image->image R@1 with the
    corrections search would apply (top HUB_CANDIDATES re-ranked by each bank's CSLS penalty)."""
    head.eval()
    scores = evaluate(head, data)
    hubs = hub_correction(head, data.train, config)
    for ev in data.evals:
        gallery = _vectors(head, ev.images)
        cosines = ev.texts.numpy() @ gallery.T  # (queries, gallery)
        corrected = top_candidates_corrected(cosines, hubs.penalties(gallery), HUB_CANDIDATES)
        scores[f"{ev.name} text->image recall@1, hubness-corrected"] = recall_at_1(corrected, ev.relevant_images)
    if data.emoji_styles is not None and config.image_hubness_weight > 0:
        queries, gallery = (_vectors(head, pooled) for pooled in data.emoji_styles)  # Google -> Twitter
        penalties = image_hub_correction(head, data.train, config).penalties(gallery)
        corrected = top_candidates_corrected(queries @ gallery.T, penalties, HUB_CANDIDATES)
        own = [{i} for i in range(len(queries))]
        scores["emoji image->image recall@1, hubness-corrected"] = recall_at_1(corrected, own)
    return {m: float(scores[m]) for m in METRICS if m in scores}


def ensemble_sizes(members: int) -> list[int]:
    """The ensembles scored from `members` trained maps: 2, 3, 5, then every 2 or 3 up to all."""
    return sorted({k for k in (2, 3, 5, 8, 10, 12, 16) if k < members} | {members})


def run_split(split: int, members: int) -> dict[str, dict[str, float]]:
    config = served_config("ensemble", split, residual_members=members)
    data = prepare(config)
    heads = [
        head for head, _ in train_members(config, data, RunFolder(Path("/tmp") / "tessera-clip-ensemble", f"s{split}"))
    ]
    alone = [score(head, data, config) for head in heads]
    rows = {
        "one map (the first member)": alone[0],
        f"one map, the mean of {members} members scored alone": {
            m: statistics.fmean(a[m] for a in alone) for m in METRICS
        },
    }
    for k in ensemble_sizes(members):
        rows[f"ensemble of {k} maps"] = score(ClipImageHead.from_members(heads[:k]), data, config)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=MEMBERS, help="maps trained per split")
    parser.add_argument(
        "--selection-only",
        action="store_true",
        help=f"split {SELECTION_SPLIT} alone, printed (choose before reporting)",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    by_split = {}
    for split in (SELECTION_SPLIT,) if args.selection_only else (SELECTION_SPLIT, *REPORT_SPLITS):
        by_split[split] = run_split(split, args.members)
        print(split, json.dumps(by_split[split]), flush=True)
    if args.selection_only:
        return
    report = {
        "report_splits": REPORT_SPLITS,
        "selection_split": SELECTION_SPLIT,
        "members": args.members,
        "scores": by_split,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "clip_ensemble.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report)


def write_markdown(report: dict) -> None:
    scores = report["scores"]
    report_splits, selection = report["report_splits"], report["selection_split"]
    rows = list(scores[report_splits[0]])
    lines = [
        "# Ensembles of the clip head's learned map",
        "",
        f"`benchmarks/clip_ensemble.py` ({report['measured']}, {report['minutes']} min): the served recipe's map "
        f"trained {report['members']} times per split (one seed each) on cached features; ensembles average the "
        "first k members' unit turns and bound the mean to the recipe's length. Mean ± sd over report splits "
        f"{', '.join(map(str, report_splits))}; split {selection} (where the choice was made) apart.",
        "",
    ]
    for metric in METRICS:
        lines += [f"## {metric}", "", f"| head | splits 1-3 | change | split {selection} |", "|---|---|---|---|"]
        base = statistics.fmean(scores[s][rows[0]][metric] for s in report_splits)
        for row in rows:
            values = [scores[s][row][metric] for s in report_splits]
            lines.append(split_row(row, values, base, scores[selection][row][metric]))
        lines.append("")
    (RESULTS / "clip_ensemble.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
