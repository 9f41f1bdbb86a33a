"""Image->image through the clip model with a hubness correction: a screen on split 0, rule first.

Issue 14 asks the clip model's image->image (emoji, Google -> Twitter drawings of held-out
codepoints, Recall@1) to be no worse than the image encoder's (0.841 on its 3 splits); the served
head gets 0.730 on split 0 (`results/clip_image_parts.md`). Text->image already corrects hubs
(CSLS, `clip_hubness.py`). Hubs exist among a gallery's images for image queries too: CSLS (Conneau
et al., ICLR 2018) ranks gallery image g for query q by cos(q, g) - w r(g), r(g) g's mean cosine to
its k = 10 nearest vectors in a bank. Here the bank is the split's own *training* images' clip
vectors (clip art and both emoji styles; never the evaluation drawings), k 10 and w 0.5 as served for
text. w 1.0 is shown beside it.

**Rule, written before the run:** the correction goes on to splits 1-3 only if, on split 0, it lifts
the served head's image->image Recall@1 by at least 0.03 at w 0.5 (w 1.0 is a diagnostic, not a
choice). Short of that, image->image stays as served and this file is the record.

Split 0 passed (+0.035, `results/clip_image_hubness.md`), so the same script with `--report` then trains the
served recipe on each of splits 1-3 (`clip_training.served_config`, the split's own seed, as
`clip_ensemble.py` did) and scores the same rows there, whatever they say.

Usage: .venv/bin/python benchmarks/clip_image_hubness.py [--report]  (needs `make clip-model
image-data`; --report ~2 min a split). Writes benchmarks/results/clip_image_hubness[_report].{json,md}.
`--report --out clip_image_hubness_report_mixed` scored the served recipe since 2026-12-07 (five maps of
three losses, `clip_mixed_losses.py`); clip_image_hubness_report.* holds five InfoNCE maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.hubness import neighbourhood_similarity  # noqa: E402
from benchmarks.clip_image_parts import HEAD, SPLIT  # noqa: E402
from benchmarks.clip_training import served_config  # noqa: E402
from training.clip_training import fit_members, prepare  # noqa: E402
from training.models.clip import ClipImageEncoder  # noqa: E402
from training.run import RunFolder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
REPORT_SPLITS = (1, 2, 3)
NEIGHBOURS = 10
WEIGHTS = (0.5, 1.0)
BAR = 0.03


def unit(head: torch.nn.Module, pooled: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(head(pooled.float()), dim=-1).numpy()


def recall_at_1(scores: np.ndarray) -> float:
    """Row i's own drawing is gallery column i (the held-out codepoints in the same order); ties count
    in the query's favour, as `training.eval.images.cross_style_recall` counts them."""
    own = np.diag(scores)[:, None]
    return round(float(((scores > own).sum(1) == 0).mean()), 4)


def score_split(split: int, trained_head: bool) -> tuple[dict[str, float], int, int]:
    """The rows on `split`: the served head (split 0) or the served recipe trained on the split."""
    config = served_config("image-hubness", split)
    data = prepare(config)
    assert data.emoji_styles is not None
    if trained_head:
        head, _ = fit_members(config, data, RunFolder(Path("/tmp") / "tessera-clip-image-hubness", f"s{split}"))
    else:
        head = ClipImageEncoder.load(HEAD).head
    head.eval()
    queries, gallery = (unit(head, style) for style in data.emoji_styles)
    bank = unit(head, data.train.pooled)
    cosines = queries @ gallery.T
    penalty = neighbourhood_similarity(bank, gallery, NEIGHBOURS)  # (gallery,)
    rows = {"served (plain cosine)": recall_at_1(cosines)}
    for weight in WEIGHTS:
        rows[f"CSLS k {NEIGHBOURS}, weight {weight}, bank: training images"] = recall_at_1(
            cosines - weight * penalty[None, :]
        )
    return rows, len(queries), len(bank)


def report_splits(stem: str) -> None:
    started = time.monotonic()
    per_split = {split: score_split(split, trained_head=True)[0] for split in REPORT_SPLITS}
    rows = list(per_split[REPORT_SPLITS[0]])
    mean = {row: round(statistics.mean(per_split[s][row] for s in REPORT_SPLITS), 4) for row in rows}
    report = {
        "splits": list(REPORT_SPLITS),
        "per split": {str(s): v for s, v in per_split.items()},
        "mean": mean,
        "minutes": round((time.monotonic() - started) / 60, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Image->image through the clip model with a hubness correction: report splits 1-3",
        "",
        f"`benchmarks/clip_image_hubness.py --report` ({report['measured']}, {report['minutes']} min): the served "
        "recipe trained on each split (its own seed), Google -> Twitter drawings of the split's 400 held-out "
        "codepoints, Recall@1; bank: the split's training images' clip vectors, k 10. Split 0 (the screen) is in "
        "`clip_image_hubness.md`. The image encoder's bar: 0.841 (`image_training.md`).",
        "",
        "| ranking | " + " | ".join(f"split {s}" for s in REPORT_SPLITS) + " | mean | change |",
        "|---|" + "---|" * (len(REPORT_SPLITS) + 2),
        *(
            f"| {row} | "
            + " | ".join(f"{per_split[s][row]:.4f}" for s in REPORT_SPLITS)
            + f" | {mean[row]:.4f} | {mean[row] - mean[rows[0]]:+.4f} |"
            for row in rows
        ),
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", action="store_true", help="train and score splits 1-3")
    parser.add_argument("--out", default="clip_image_hubness_report", help="--report's results stem")
    args = parser.parse_args()
    torch.set_num_threads(2)
    RESULTS.mkdir(exist_ok=True)
    if args.report:
        report_splits(args.out)
        return
    started = time.monotonic()
    rows, codepoints, bank_size = score_split(SPLIT, trained_head=False)
    gain = rows[f"CSLS k {NEIGHBOURS}, weight 0.5, bank: training images"] - rows["served (plain cosine)"]
    report = {
        "split": SPLIT,
        "codepoints": codepoints,
        "bank": bank_size,
        "emoji image->image recall@1": rows,
        "gain at weight 0.5": round(gain, 4),
        "passes (>= +0.03)": bool(gain >= BAR),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }
    (RESULTS / "clip_image_hubness.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Image->image through the clip model with a hubness correction (split 0 screen)",
        "",
        f"`benchmarks/clip_image_hubness.py` ({report['measured']}): the served head ({HEAD.relative_to(ROOT)}, "
        f"trained on split {SPLIT}), Google -> Twitter drawings of its {report['codepoints']} held-out codepoints, "
        f"Recall@1; the bank is the split's {report['bank']} training images' clip vectors. "
        f"Rule: go on to splits 1-3 only with >= +{BAR} at weight 0.5.",
        "",
        "| ranking | emoji image->image R@1 |",
        "|---|---|",
        *(f"| {row} | {value:.4f} |" for row, value in rows.items()),
        "",
        f"Gain at weight 0.5: {report['gain at weight 0.5']:+.4f}; passes: {report['passes (>= +0.03)']}.",
        "",
    ]
    (RESULTS / "clip_image_hubness.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
