"""WiSE-FT for the image encoder: does stopping part of the way back to the raw tower help the unseen style?

The served image encoder (training/configs/serve-image.yaml) halves the seen styles' cross-style
error but not the unseen style's (OpenMoji R@1 0.537 where halving needs ~0.636;
benchmarks/image_reading.md). Fine-tuning on two styles narrows what the last stage encodes; Wortsman
et al. ("Robust fine-tuning of zero-shot models", CVPR 2022) found that interpolating the fine-tuned
weights with the start's, θ = θ_0 + α (θ_ft - θ_0), keeps the fine-tuned model's in-distribution
gains and recovers robustness under distribution shift, at no training cost. Here θ_0 is the
encoder training started from (ImageNet last stage, identity head, zero-initialised map path: the
raw features exactly, re-made from the run's seed) and an unseen art style is the shift.

Decision rule, written before the first run: on the tuning split (seed = split_seed = 10, as every
image recipe choice, Fashion-MNIST on 2,000 test images), α over 0.5, 0.6, 0.7, 0.8, 0.9 against 1;
the α with the best unseen-style R@1 among those keeping Google->Twitter R@1 within 0.02 of α = 1
and Fashion-MNIST P@10 within 0.02 of the raw tower's goes on to the 3 reported seeds (0, 1, 2) if it
gains >= 0.01 unseen-style R@1 over α = 1 on the tuning split. Reported seeds are scored at that α
and at 1, whatever they show.

Result (2026-12-04, tuning split): α = 1 reproduces the served recipe's tuning row (0.838 / 0.810 /
0.536). The unseen style peaks at α = 0.8 with 0.5418, +0.0057, under the 0.01 the rule asks, while
Google->Twitter gives up 0.0125 and mAP 0.02. So no α went on to the reported seeds: WiSE-FT's
robustness under shift is real here but small, and the unseen style stays ~0.09 short of halving
its error.

Usage: .venv/bin/python benchmarks/image_wise.py [--seeds 10] [--seeds 0 1 2 --alphas A]
Writes benchmarks/results/image_wise.json and .md (every seed run so far, merged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import record_runs, seed_tables  # noqa: E402
from training.config import ImageTrainConfig, load_yaml_config  # noqa: E402
from training.image_training import _encoder, _evaluate, _prepare, _raw_encoder, train_image_encoder  # noqa: E402
from training.interpolation import interpolate_weights  # noqa: E402
from training.models.image import ImageEncoder  # noqa: E402
from training.run import seed_everything  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING_SEED, REPORT_SEEDS = 10, (0, 1, 2)
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
METRICS = {
    "G->T R@1": "google->twitter recall@1",
    "T->G R@1": "twitter->google recall@1",
    "unseen style R@1": "held_out_style recall@1 (mean)",
    "identity mAP": "identity mAP",
    "F-MNIST P@10": "fashion_mnist precision@10",
}


def config_for(seed: int) -> ImageTrainConfig:
    base = load_yaml_config(ROOT / "training" / "configs" / "serve-image.yaml", ImageTrainConfig)
    assert isinstance(base, ImageTrainConfig)
    update = {"name": f"bench-image-wise{seed}", "seed": seed, "split_seed": seed, "export": None}
    update |= {"fashion_mnist": ROOT / "data" / "fashion-mnist", "fashion_mnist_limit": 2000}
    return base.model_copy(update=update)


def run_seed(seed: int, alphas: list[float]) -> dict[str, dict[str, float]]:
    """Metrics of the raw tower and of the run's weights at each α (the run trained once)."""
    config = config_for(seed)
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    seed_everything(config.seed)  # as train_image_encoder did before making the encoder it trained
    start = _encoder(config).eval()
    data = _prepare(start, config)
    rows = {"raw tower": _evaluate(_raw_encoder(config), data, config)}
    for alpha in alphas:
        model = ImageEncoder.load(folder)
        interpolate_weights(model, start, alpha)
        rows[f"α = {alpha}"] = _evaluate(model.eval(), data, config)
    for name, scores in rows.items():
        print(seed, name, json.dumps({k: scores.get(v) for k, v in METRICS.items()}), flush=True)
    return rows


def write_markdown(report: dict) -> None:
    runs = {int(s): rows for s, rows in report["seeds"].items()}
    lines = [
        "# WiSE-FT for the image encoder",
        "",
        f"`benchmarks/image_wise.py` ({report['measured']}): serve-image.yaml's recipe trained once per "
        "seed (seed = split_seed, Fashion-MNIST on 2,000 test images), its weights interpolated with "
        "the start's (θ_0 + α (θ_ft - θ_0)); α = 1 is the trained encoder. Decision rule in the "
        "script's docstring, written before the run.",
    ]
    groups = [([TUNING_SEED], "tuning split (seed 10)"), (list(REPORT_SEEDS), "reported seeds 0, 1, 2")]
    lines += seed_tables(runs, groups, "weights", METRICS, digits=3)
    (RESULTS / "image_wise.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[TUNING_SEED])
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    args = parser.parse_args()
    torch.set_num_threads(2)
    record_runs(
        RESULTS / "image_wise.json", "seeds", args.seeds, lambda seed: run_seed(seed, args.alphas), write_markdown
    )


if __name__ == "__main__":
    main()
