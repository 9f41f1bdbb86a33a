"""Hubness correction (CSLS) for the image encoder's own image->image search: does it help the unseen style?

Issue 13's open target: the served image encoder (serve-image.yaml) must halve the raw features'
cross-style error on a style it never trained on (OpenMoji R@1 0.537 over the 3 reported seeds;
halving needs ~0.636). The clip model's image queries gained +0.03 on emoji image->image from CSLS
(Conneau et al., ICLR 2018; `clip_image_hubness.py`): gallery image g is ranked for query q by
cos(q, g) - w r(g), r(g) g's mean cosine to its k = 10 nearest vectors in a bank of the split's
*training* images. Hubs are a symptom of a shifted query distribution, so a style never trained on
is where they should matter most. Here the same correction is applied to the image encoder's
vectors. The bank is the training codepoints' drawings in the two training styles (no augmented
copies, never an OpenMoji drawing and never a held-out codepoint), k 10, w 0.5 as served for the
clip model; w 1.0 and a bank with the augmented copies are diagnostics, not choices.

**Rule, written before the first run:** on the tuning split (seed = split_seed = 10; the run of the
served recipe there is loaded when present, else trained), the correction at w 0.5 (training-image
bank) goes on to the reported seeds 0, 1, 2 only if it lifts the unseen-style R@1 (mean over the
pairs with OpenMoji) by at least 0.03 with Google->Twitter R@1 no more than 0.01 lower. The reported
seeds are then scored with and without it, whatever they show, and it is served for image models
only if their mean unseen-style R@1 gains at least 0.02 with Google->Twitter no more than 0.01
lower. Short of that, this file and its results are the record.

Result (2026-12-06, tuning split): the unseen style falls 0.5361 -> 0.5163 at w 0.5 while
Google->Twitter gains 0.8375 -> 0.855; the rule fails, nothing went on to the reported seeds
(`image_reading.md`).

Usage: .venv/bin/python benchmarks/image_hubness.py [--seeds 10] [--seeds 0 1 2]  (needs
`make image-data`; ~3 min a seed to train when its run is not there).
Writes benchmarks/results/image_hubness.{json,md} (every seed run so far, merged).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.hubness import neighbourhood_similarity  # noqa: E402
from benchmarks.clip_image_hubness import recall_at_1  # noqa: E402
from benchmarks.report import record_runs, seed_tables  # noqa: E402
from training.config import ImageTrainConfig, load_yaml_config  # noqa: E402
from training.eval.clip import unit  # noqa: E402
from training.image_training import (  # noqa: E402
    _embed,
    _encoder,
    _prepare,
    style_pair_rows,
    subset,
    train_image_encoder,
)
from training.models.image import ImageEncoder  # noqa: E402
from training.run import seed_everything  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING_SEED, REPORT_SEEDS = 10, (0, 1, 2)
NEIGHBOURS = 10
UNSEEN = "openmoji"
ROWS = ("plain cosine", "CSLS w 0.5, bank: training images", "CSLS w 1.0, bank: training images")
DIAGNOSTIC = "CSLS w 0.5, bank: training images + augmented copies"


def config_for(seed: int) -> ImageTrainConfig:
    """serve-image.yaml on split `seed`; the tuning split's name is the run an earlier benchmark left."""
    base = load_yaml_config(ROOT / "training" / "configs" / "serve-image.yaml", ImageTrainConfig)
    assert isinstance(base, ImageTrainConfig)
    name = "tune-fs-served" if seed == TUNING_SEED else f"bench-image-hubness{seed}"
    return base.model_copy(update={"name": name, "seed": seed, "split_seed": seed, "export": None})


def style_pairs(
    vectors: np.ndarray,
    identities: list[str],
    views: list[str],
    styles: list[str],
    banks: dict[str, tuple[np.ndarray, float]],
) -> dict[str, dict[str, float]]:
    """{row: {"A->B": R@1}} for every ordered pair of `styles`, on the codepoints having both; each
    row's gallery image loses weight x its mean cosine to its NEIGHBOURS nearest in the row's bank."""
    scores: dict[str, dict[str, float]] = {name: {} for name in banks}
    for a, b, query_rows, gallery_rows in style_pair_rows(identities, views, styles):
        queries, gallery = vectors[query_rows], vectors[gallery_rows]
        for name, (bank, weight) in banks.items():
            penalty = weight * neighbourhood_similarity(bank, gallery, NEIGHBOURS) if weight else 0.0
            scores[name][f"{a}->{b}"] = recall_at_1(queries @ gallery.T - penalty)
    return scores


def run_seed(seed: int) -> dict[str, dict[str, float]]:
    config = config_for(seed)
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    seed_everything(config.seed)
    data = _prepare(_encoder(config).eval(), config)
    model = ImageEncoder.load(folder).eval()
    test = unit(_embed(model, data.test.activations))
    plain_bank = subset(data.train, set(data.train.identities), set(config.train_styles), augmented=False)
    bank = unit(_embed(model, plain_bank.activations))
    augmented_bank = unit(_embed(model, data.train.activations))
    banks = {ROWS[0]: (bank, 0.0), ROWS[1]: (bank, 0.5), ROWS[2]: (bank, 1.0), DIAGNOSTIC: (augmented_bank, 0.5)}
    rows = style_pairs(test, data.test.identities, data.test.views, data.eval_styles, banks)
    for name, pairs in rows.items():
        unseen = [v for pair, v in pairs.items() if UNSEEN in pair]
        pairs["unseen style R@1 (mean)"] = round(statistics.fmean(unseen), 4)
        pairs["bank images"] = len(bank) if "augmented" not in name else len(augmented_bank)
        print(seed, name, pairs, flush=True)
    return rows


def write_markdown(report: dict) -> None:
    runs = {int(s): rows for s, rows in report["seeds"].items()}
    columns = ["google->twitter", "twitter->google", "unseen style R@1 (mean)"]
    lines = [
        "# Hubness correction for the image encoder's image->image search",
        "",
        f"`benchmarks/image_hubness.py` ({report['measured']}): serve-image.yaml's recipe on each split "
        "(seed = split_seed), Recall@1 between the styles of the split's 400 held-out codepoints; CSLS k 10 "
        "with a bank of the split's training drawings in the two training styles. Rule in the script's "
        "docstring, written before the run.",
    ]
    groups = [([TUNING_SEED], "tuning split (seed 10)"), (list(REPORT_SEEDS), "reported seeds 0, 1, 2")]
    lines += seed_tables(runs, groups, "ranking", {c: c for c in columns})
    (RESULTS / "image_hubness.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[TUNING_SEED])
    args = parser.parse_args()
    torch.set_num_threads(2)
    record_runs(RESULTS / "image_hubness.json", "seeds", args.seeds, run_seed, write_markdown)


if __name__ == "__main__":
    main()
