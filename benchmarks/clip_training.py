"""Image-text models against ConSE and chance, 3 splits: every row trains on the same cached features.

Rows: chance; ConSE (no training); the served recipe (InfoNCE, ConSE + an MLP of pooled features
of length 1.0, gated by how familiar the image is to the training images, + a TCL-style intra-modal
term: two emoji styles of one codepoint); the same at length 0.6; the recipe before the gate (length
0.6, ungated); that without the TCL term; that with CWCL and SigLIP; the learned map unbounded (what happens to photos);
the bounded map gated by the tower's uncertainty; LiT-style (locked image tower, trainable image
and text projections, no ConSE). Splits 1, 2, 3 of OpenClipart files and emoji codepoints (the
recipe was chosen on split 0, benchmarks/clip_reading.md); COCO-mini photos and the zero-shot sets
are the same in every split (never trained on).

Usage: .venv/bin/python benchmarks/clip_training.py [--tower efficientnet_lite0|mobilenet_v2] [--out STEM]
(needs `make model image-data`; ~15 min here, most of it caching tower features once). Writes
benchmarks/results/clip_training.json and .md (the served tower, EfficientNet-Lite0);
`--tower mobilenet_v2 --out clip_training_mobilenet_v2` wrote the MobileNetV2 table (served until
2026-12-02). `--trim-transparent 0.04 --out clip_training_trim --rows "ConSE (no training)" "<the served
row>" "<the by-source row>"` wrote the served recipe with transparent drawings trimmed (served since
2026-12-04: the trim is a property of the data every row is trained and evaluated on, so it is a
run's option, not a row) and batches by source beside it (not adopted: clip_reading.md). `--trim-transparent
0.04 --out clip_training_ensemble --rows` ConSE, the served row and the one-MLP row wrote the served
recipe with five maps averaged (served since 2026-12-04) beside one map. `--trim-transparent 0.04
--out clip_training_mixed --rows` ConSE and the served row wrote the five maps of three losses
(served since 2026-12-07, `clip_mixed_losses.py`) with every metric.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.clip_training import ClipData, build_head, evaluate, fit_members, prepare, text_map_for  # noqa: E402
from training.config import ClipTrainConfig, LossConfig  # noqa: E402
from training.models.image_towers import TOWER_TITLES  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SPLITS = (1, 2, 3)
# training/configs/serve-clip.yaml's recipe, read from it: ClipTrainConfig's defaults + the TCL term +
# the familiarity gate with the map's length 1.0, five maps of three losses (every row below it
# changes the defaults, not the served recipe). Its tower and trim are set apart (--tower,
# --trim-transparent); its zero-shot sets, text tower path and export are serving's, not the recipe's.
SERVE_CLIP = ClipTrainConfig.model_validate(yaml.safe_load((ROOT / "training/configs/serve-clip.yaml").read_text()))
RECIPE_KEYS = ("intra_modal_weight", "residual_gate", "residual_scale", "residual_members", "member_losses")
SERVED = {key: getattr(SERVE_CLIP, key) for key in RECIPE_KEYS}
FIVE_INFONCE = {**SERVED, "member_losses": []}  # served until 2026-12-07
TRIM = SERVE_CLIP.trim_transparent  # the default of --trim-transparent
ROWS: dict[str, dict] = {
    "ConSE (no training)": {"untrained": True, "residual": "none"},
    "3 InfoNCE + 1 DCL + 1 CWCL MLPs of length 1.0 averaged + familiarity gate + TCL term 0.5 (served recipe)": SERVED,
    "InfoNCE, 5 MLPs of length 1.0 averaged + familiarity gate + TCL term 0.5 (served until 2026-12-07)": FIVE_INFONCE,
    "the served recipe with one MLP (served until 2026-12-04)": {**FIVE_INFONCE, "residual_members": 1},
    "the served recipe, batches of 128 by source (clip art or emoji)": {
        **FIVE_INFONCE,
        "batching": "by_source",
        "batch_size": 128,
    },
    "InfoNCE, MLP length 0.6 + familiarity gate + TCL term 0.5": {**FIVE_INFONCE, "residual_scale": 0.6},
    "InfoNCE, bounded MLP + TCL intra-modal term 0.5 (served until 2026-12-04)": {"intra_modal_weight": 0.5},
    "InfoNCE, bounded MLP (served until 2026-12-02)": {},
    "CWCL, bounded MLP": {"loss": LossConfig(name="cwcl", temperature=0.05, learnable_temperature=True)},
    "SigLIP, bounded MLP": {"loss": LossConfig(name="siglip", learnable_temperature=True)},
    "InfoNCE, unbounded linear map": {"residual": "linear", "residual_scale": None},
    # The map's length times 1 - the tower's top ImageNet probability (a negative result on split 0:
    # clip_reading.md).
    "InfoNCE, MLP bounded 0.75 x (1 - top probability)": {"residual_scale": 0.75, "residual_gate": "uncertainty"},
    "LiT-style: locked tower, image + text projections, no ConSE": {
        "conse": False,
        "residual": "linear",
        "residual_scale": None,
        "text_projection": True,
    },
}
METRICS = [
    "coco-mini text->image recall@1",
    "coco-mini text->image recall@5",
    "coco-mini text->image recall@10",
    "coco-mini image->text recall@1",
    "emoji text->image recall@1",
    "emoji text->image recall@10",
    "openclipart text->image recall@1",
    "openclipart text->image recall@10",
    "openclipart image->text recall@1",
    "emoji image->image recall@1",
    "fashion-mnist zero-shot top1",
    "mnist zero-shot top1",
]


def chance(data: ClipData) -> dict[str, float]:
    """Expected Recall@k of a random ranking (mean over queries of P(a relevant item in the top k))."""
    out: dict[str, float] = {}
    for ev in data.evals:
        gallery = len(ev.images)
        for k in (1, 5, 10):
            hits = [min(1.0, 1 - _none_in_top(gallery, len(rel), k)) for rel in ev.relevant_images]
            out[f"{ev.name} text->image recall@{k}"] = statistics.fmean(hits)
        texts = [rel for rel in ev.relevant_texts if rel]
        out[f"{ev.name} image->text recall@1"] = statistics.fmean(len(r) / len(ev.texts) for r in texts)
    out["emoji image->image recall@1"] = 1 / len(data.emoji_styles[0]) if data.emoji_styles else float("nan")
    for name in data.zero_shot:
        out[f"{name} zero-shot top1"] = 0.1
    return out


def _none_in_top(gallery: int, relevant: int, k: int) -> float:
    """P(none of `relevant` items among the first k of a random order of `gallery`)."""
    p = 1.0
    for i in range(k):
        p *= max(0.0, (gallery - relevant - i) / (gallery - i))
    return p


def served_config(name: str, split: int, **update: object) -> ClipTrainConfig:
    """serve-clip.yaml's recipe on `split` (the split's own seed, Lite0, drawings trimmed), with
    `update` on top: what the clip benchmarks beside this one train and compare against. An update
    that sets `loss` or `residual_members` and not `member_losses` trains every member with `loss`
    (InfoNCE unless set): the rows written before the served members mixed losses mean that."""
    base = ClipTrainConfig(name=name, split_seed=split, seed=split, tower=SERVE_CLIP.tower, trim_transparent=TRIM)
    served = dict(SERVED)
    if ("loss" in update or "residual_members" in update) and "member_losses" not in update:
        served["member_losses"] = []
    return base.model_copy(update={**served, **update})


def run_row(data: ClipData, base: ClipTrainConfig, row: dict, seed: int) -> dict[str, float]:
    row = dict(row)
    untrained = row.pop("untrained", False)
    config = base.model_copy(update={**row, "seed": seed})
    if untrained:
        return evaluate(build_head(config, data.class_vectors), data)
    text_map = text_map_for(config, data.class_vectors.shape[1])
    head, _ = fit_members(config, data, RunFolder(Path("/tmp") / "tessera-clip-bench", f"s{seed}"), text_map)
    return evaluate(head, data, text_map)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tower", choices=sorted(TOWER_TITLES), default=SERVE_CLIP.tower)
    parser.add_argument("--out", default="clip_training", help="results file stem under benchmarks/results")
    parser.add_argument("--rows", nargs="+", choices=sorted(ROWS), help="only these trained rows (default: all)")
    parser.add_argument(
        "--trim-transparent", type=float, default=None, help="every row: transparent images cut to their visible pixels"
    )
    args = parser.parse_args()
    rows = {name: row for name, row in ROWS.items() if not args.rows or name in args.rows}
    torch.set_num_threads(2)
    report: dict[str, dict[str, list[float]]] = {"chance": {}}
    started = time.monotonic()
    for split in SPLITS:
        base = ClipTrainConfig(
            name="bench", split_seed=split, seed=split, tower=args.tower, trim_transparent=args.trim_transparent
        )
        data = prepare(base)
        for k, v in chance(data).items():
            report["chance"].setdefault(k, []).append(v)
        for name, row in rows.items():
            scores = run_row(data, base, row, seed=split)
            for k, v in scores.items():
                report.setdefault(name, {}).setdefault(k, []).append(v)
            print(
                f"split {split} {name}: " + ", ".join(f"{m.split(' ', 1)[0][:5]} {scores[m]:.3f}" for m in METRICS[:6])
            )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps(
            {"splits": SPLITS, "tower": args.tower, "trim_transparent": args.trim_transparent, "rows": report}, indent=2
        )
        + "\n"
    )
    write_markdown(report, time.monotonic() - started, TOWER_TITLES[args.tower], args.out, args.trim_transparent)


def write_markdown(
    report: dict[str, dict[str, list[float]]], seconds: float, tower: str, stem: str, trim: float | None = None
) -> None:
    def cell(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 and mean > 0.0 else f"{mean:.4f}"

    lines = [
        "# Image-text models vs ConSE and chance (mean ± sd over 3 splits)",
        "",
        "Produced by `benchmarks/clip_training.py` in "
        f"{seconds / 60:.0f} min. Text tower: all-MiniLM-L6-v2, unchanged (except the LiT row). Image "
        f"tower: {tower} (ImageNet), frozen"
        + (f", transparent images cut to their visible pixels (margin {trim})" if trim is not None else "")
        + ". Trained on OpenClipart captions and emoji names "
        "(splits 1-3 by file / codepoint; the recipe was chosen on split 0). COCO-mini (80 photos, 400 "
        "captions), Fashion-MNIST and MNIST test are never trained on.",
        "",
        "| model | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for name, scores in report.items():
        lines.append(f"| {name} | " + " | ".join(cell(scores[m]) if m in scores else "-" for m in METRICS) + " |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
