"""Does the clip head's learned map do better on a trained image encoder's features?

The clip model's image->image recall across emoji styles (0.73 on split 0, 0.769 on splits 1-3) trails
the image encoder's (0.841: EfficientNet-Lite0 with its last stage trained with DCL on emoji art
styles, training/configs/serve-image.yaml), and benchmarks/results/clip_image_parts.md shows why: the
clip head's map only sees the frozen tower's pooled features. This row gives the map the trained
encoder's embedding of each image beside them (ClipTrainConfig.image_encoder; ConSE and the
familiarity gate keep the frozen tower's features, so photos are untouched). The encoder of split s
is trained with `split_seed` s (the clip split's own held-out codepoints, never seen by it), by the
served image recipe, here, in `runs/bench-image-split<s>` (~4 min each; a finished one is reused).

Decision rule, written before the first run: on split 0 (selection), the encoder row goes on to the
report splits only if emoji image->image R@1 gains >= 0.03 over the served recipe and none of emoji
text->image R@1 (hubness-corrected, as served), OpenClipart text->image R@1 and COCO-mini text->image
R@1 falls by more than 0.01. Splits 1-3 are reported whatever they show.

Result (2026-12-04, split 0): image->image 0.730 -> 0.735 (+0.005), so the row stopped there. The
map does take something from the encoder (emoji names R@1 +0.0225 plain, but +0.0025 with the
served hubness correction; OpenClipart R@1 +0.012, R@10 +0.028), and COCO-mini's corrected R@1
falls 0.01. The map is trained towards caption and name vectors, and what it keeps of the
encoder's style invariance is not enough to move image->image (its parts were not scored apart for
this row, as clip_image_parts.py does for the served head); the image encoder stays the model for
image->image.

Usage: .venv/bin/python benchmarks/clip_encoder_features.py [--splits 0] [--splits 1 2 3]
Writes benchmarks/results/clip_encoder_features.json and .md (every split run so far, merged).
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

from benchmarks.clip_ensemble import METRICS, score  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from benchmarks.report import split_row  # noqa: E402
from training.clip_training import fit_members, prepare  # noqa: E402
from training.config import ImageTrainConfig, load_yaml_config  # noqa: E402
from training.image_training import train_image_encoder  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SELECTION_SPLIT, REPORT_SPLITS = 0, (1, 2, 3)
ROWS = ("served recipe (pooled tower features)", "served recipe, map on pooled features + image encoder's embedding")


def encoder_folder(split: int) -> Path:
    """The served image recipe trained on split `split`'s training codepoints (trained once)."""
    base = load_yaml_config(ROOT / "training" / "configs" / "serve-image.yaml", ImageTrainConfig)
    assert isinstance(base, ImageTrainConfig)
    config = base.model_copy(update={"name": f"bench-image-split{split}", "split_seed": split, "export": None})
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    return folder


def run_split(split: int) -> dict[str, dict[str, float]]:
    scores = {}
    for row, update in zip(ROWS, ({}, {"image_encoder": encoder_folder(split)}), strict=True):
        config = served_config("encoder-features", split, **update)
        data = prepare(config)
        head, _ = fit_members(config, data, RunFolder(Path("/tmp") / "tessera-clip-encoder", f"s{split}"))
        scores[row] = score(head, data, config)
        print(split, row, json.dumps(scores[row]), flush=True)
    return scores


def write_markdown(report: dict) -> None:
    by_split = {int(s): rows for s, rows in report["scores"].items()}
    report_splits = [s for s in REPORT_SPLITS if s in by_split]
    lines = [
        "# The clip head's map on a trained image encoder's features",
        "",
        f"`benchmarks/clip_encoder_features.py` ({report['measured']}): the served clip recipe (5 maps, "
        "familiarity gate, TCL term, trimmed drawings) with its map on the frozen tower's pooled features, "
        "and with the image encoder's embedding (serve-image.yaml's recipe trained on the same split's "
        "training codepoints) beside them. Decision rule in the script's docstring, written before the "
        f"run. Report splits {', '.join(map(str, report_splits)) or 'none: the rule stopped the row at split 0'}; split {SELECTION_SPLIT} "
        "(selection) apart.",
    ]
    for metric in METRICS:
        lines += ["", f"## {metric}", ""]
        if not report_splits:  # the selection split alone (the rule did not send the row further)
            base = by_split[SELECTION_SPLIT][ROWS[0]][metric]
            lines += ["| head | split 0 | change |", "|---|---|---|"]
            lines += [
                f"| {row} | {by_split[0][row][metric]:.4f} | {by_split[0][row][metric] - base:+.4f} |" for row in ROWS
            ]
            continue
        lines += ["| head | report splits | change | split 0 |", "|---|---|---|---|"]
        base = statistics.fmean(by_split[s][ROWS[0]][metric] for s in report_splits)
        for row in ROWS:
            selection = by_split[SELECTION_SPLIT][row][metric] if SELECTION_SPLIT in by_split else float("nan")
            lines.append(split_row(row, [by_split[s][row][metric] for s in report_splits], base, selection))
    (RESULTS / "clip_encoder_features.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, nargs="+", default=[SELECTION_SPLIT])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the committed .json")
    args = parser.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((RESULTS / "clip_encoder_features.json").read_text()))
        return
    torch.set_num_threads(2)
    path = RESULTS / "clip_encoder_features.json"
    report = json.loads(path.read_text()) if path.is_file() else {"scores": {}}
    for split in args.splits:
        report["scores"][str(split)] = run_split(split)
        report["measured"] = time.strftime("%Y-%m-%d %H:%M")
        path.write_text(json.dumps(report, indent=2) + "\n")
        write_markdown(report)


if __name__ == "__main__":
    main()
