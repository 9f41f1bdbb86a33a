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

Second round, rule written before it ran: the map was trained towards captions with the TCL term
(two styles of one emoji pulled together) at the served weight 0.5; with a style-invariant input
the term may now move image->image at a heavier weight. Rows: the encoder row with the term at 1.0
and 2.0, and the served (pooled) row at 2.0 to tell the input's part from the weight's. The same
rule as above decides, against the served row, on split 0; the best row passing it (by
image->image) goes to splits 1-3.

Result (2026-12-04, split 0): image->image 0.740 and 0.7425 with the encoder at TCL 1.0 and 2.0,
0.735 for the pooled row at 2.0: none gains the 0.03, so no row went on. A heavier pull between
styles hardly moves image->image, with or without the style-invariant input (and costs the pooled
row 0.015 of hubness-corrected emoji names).

Usage: .venv/bin/python benchmarks/clip_encoder_features.py [--splits 0] [--splits 1 2 3] [--rows ...]
Writes benchmarks/results/clip_encoder_features.json and .md (every split run so far, merged).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.clip_ensemble import METRICS, score  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from benchmarks.report import record_runs, split_row  # noqa: E402
from training.clip_training import fit_members, prepare  # noqa: E402
from training.config import ImageTrainConfig, load_yaml_config  # noqa: E402
from training.image_training import train_image_encoder  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SELECTION_SPLIT, REPORT_SPLITS = 0, (1, 2, 3)
SERVED_ROW, ENCODER_ROW = (
    "served recipe (pooled tower features)",
    "served recipe, map on pooled features + image encoder's embedding",
)
# row -> (the map reads the split's image encoder too, changes to the served recipe)
ROWS: dict[str, tuple[bool, dict]] = {
    SERVED_ROW: (False, {}),
    ENCODER_ROW: (True, {}),
    "+ image encoder's embedding, TCL term 1.0": (True, {"intra_modal_weight": 1.0}),
    "+ image encoder's embedding, TCL term 2.0": (True, {"intra_modal_weight": 2.0}),
    "served recipe, TCL term 2.0": (False, {"intra_modal_weight": 2.0}),
}


def encoder_folder(split: int) -> Path:
    """The served image recipe trained on split `split`'s training codepoints (trained once)."""
    base = load_yaml_config(ROOT / "training" / "configs" / "serve-image.yaml", ImageTrainConfig)
    assert isinstance(base, ImageTrainConfig)
    config = base.model_copy(update={"name": f"bench-image-split{split}", "split_seed": split, "export": None})
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    return folder


def run_split(split: int, rows: list[str]) -> dict[str, dict[str, float]]:
    scores = {}
    for row in rows:
        with_encoder, update = ROWS[row]
        if with_encoder:
            update = {**update, "image_encoder": encoder_folder(split)}
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
        f"run. Split {SELECTION_SPLIT} (selection), then report splits "
        f"{', '.join(map(str, report_splits)) or 'none: the rule stopped every row at split 0'}.",
    ]
    selected = [row for row in ROWS if row in by_split.get(SELECTION_SPLIT, {})]
    reported = [row for row in ROWS if report_splits and all(row in by_split[s] for s in report_splits)]
    for metric in METRICS:
        if metric not in by_split[SELECTION_SPLIT][SERVED_ROW]:  # scored only by runs after this one's
            continue
        lines += ["", f"## {metric}", ""]
        base = by_split[SELECTION_SPLIT][SERVED_ROW][metric]
        lines += ["| head | split 0 | change |", "|---|---|---|"]
        lines += [
            f"| {row} | {by_split[0][row][metric]:.4f} | {by_split[0][row][metric] - base:+.4f} |" for row in selected
        ]
        if reported:
            lines += ["", "| head | report splits | change | split 0 |", "|---|---|---|---|"]
            base = statistics.fmean(by_split[s][SERVED_ROW][metric] for s in report_splits)
            for row in reported:
                values = [by_split[s][row][metric] for s in report_splits]
                lines.append(split_row(row, values, base, by_split[SELECTION_SPLIT][row][metric]))
    (RESULTS / "clip_encoder_features.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--splits", type=int, nargs="+", default=[SELECTION_SPLIT])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=[SERVED_ROW, ENCODER_ROW])
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the committed .json")
    args = parser.parse_args()
    path = RESULTS / "clip_encoder_features.json"
    if args.markdown_only:
        write_markdown(json.loads(path.read_text()))
        return
    torch.set_num_threads(2)
    record_runs(path, "scores", args.splits, lambda split: run_split(split, args.rows), write_markdown)


if __name__ == "__main__":
    main()
