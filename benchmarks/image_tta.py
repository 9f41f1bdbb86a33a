"""Mirror test-time averaging for the image encoder: does a mirror-invariant vector help the unseen style?

The served image encoder (training/configs/serve-image.yaml) halves the seen styles' cross-style
error but not the unseen style's (OpenMoji R@1 0.537 where halving needs ~0.636;
benchmarks/image_reading.md). Art styles often draw one identity facing the other way (an animal
looking left in one set, right in another), and the head's spatial path encodes where things lie.
Here a vector is the mean of the unit embeddings of the image and of its mirror image, so a figure
and its mirror image get the same vector. Served, it would double the tower's work per image (one
more forward pass in `image.onnx`), so it has to buy a clear gain.

Decision rule, written before the first run: on the tuning split (seed = split_seed = 10, as every
image recipe choice; Fashion-MNIST on 2,000 test images), the served recipe trained once and scored
with and without mirror averaging. Mirror averaging goes on to the 3 reported seeds (0, 1, 2) only if
it gains >= 0.02 unseen-style R@1 with Google->Twitter and Twitter->Google R@1 each within 0.01 of
the plain vectors' and Fashion-MNIST P@10 within 0.01. Reported seeds are scored both ways, whatever
they show; only then would it be built into the export.

Usage: .venv/bin/python benchmarks/image_tta.py [--seeds 10] [--seeds 0 1 2]
Writes benchmarks/results/image_tta.json and .md (every seed run so far, merged).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.images import ImageLimits, open_image  # noqa: E402
from benchmarks.image_wise import config_for as wise_config  # noqa: E402
from benchmarks.report import record_runs  # noqa: E402
from training.config import ImageTrainConfig  # noqa: E402
from training.data.images import emoji_path, load_identities, load_idx_split, split_identities  # noqa: E402
from training.eval.clip import unit  # noqa: E402
from training.eval.images import precision_at_k  # noqa: E402
from training.export.image import image_tower_section  # noqa: E402
from training.image_training import _activations, _embed, _raw_encoder, emoji_metrics, train_image_encoder  # noqa: E402
from training.models.image import ImageEncoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING_SEED, REPORT_SEEDS = 10, (0, 1, 2)
SEEN, UNSEEN = ("google", "twitter"), "openmoji"


def config_for(seed: int) -> ImageTrainConfig:
    """The served recipe on `seed`'s split, as image_wise.py trains it, in a run folder of its own."""
    return wise_config(seed).model_copy(update={"name": f"bench-image-tta{seed}"})


def _vectors(encoder: ImageEncoder, activations: torch.Tensor) -> np.ndarray:
    return unit(_embed(encoder, activations))


def _scores(vectors: np.ndarray, ids: list[str], views: list[str], fmnist: tuple[np.ndarray, np.ndarray]) -> dict:
    """The seen pair's R@1 both ways, the mean R@1 of the pairs with the unseen style, identity mAP
    (training's emoji metrics, keyed as this report has them) and Fashion-MNIST P@10."""
    metrics = emoji_metrics(vectors, ids, views, [*SEEN, UNSEEN], list(SEEN))
    out = {f"{a}->{b} recall@1": metrics[f"{a}->{b} recall@1"] for a, b in (SEEN, SEEN[::-1])}
    out["unseen style recall@1"] = metrics["held_out_style recall@1 (mean)"]
    out["identity mAP"] = metrics["identity mAP"]
    out["fashion_mnist precision@10"] = round(precision_at_k(fmnist[0], fmnist[1]), 4)
    return out


def trained_encoder(config: ImageTrainConfig) -> ImageEncoder:
    """The run's trained encoder, trained first when its run folder has none."""
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    return ImageEncoder.load(folder)


@dataclass
class EvaluationImages:
    """The split's held-out codepoints in the seen and unseen styles, then Fashion-MNIST test images."""

    ids: list[str]  # identity of each drawing
    views: list[str]  # its style
    images: list[Image.Image]  # the drawings, then the clothes
    labels: np.ndarray  # the clothes' classes

    @property
    def drawings(self) -> int:
        return len(self.ids)


def evaluation_images(config: ImageTrainConfig) -> EvaluationImages:
    _, test_ids = split_identities(load_identities(config.data), config.test_identities, config.split_seed)
    limits = ImageLimits()
    ids, views, images = [], [], []
    for identity in test_ids:
        for style in (*SEEN, UNSEEN):
            if style in identity.styles:
                ids.append(identity.unified)
                views.append(style)
                images.append(open_image(emoji_path(config.data, style, identity.unified).read_bytes(), limits))
    assert config.fashion_mnist is not None
    pixels, labels = load_idx_split(config.fashion_mnist, "t10k")
    images += [Image.fromarray(p, "L") for p in pixels[: config.fashion_mnist_limit]]
    return EvaluationImages(ids, views, images, labels[: config.fashion_mnist_limit])


def run_seed(seed: int) -> dict[str, dict[str, float]]:
    config = config_for(seed)
    trained = trained_encoder(config)
    raw = _raw_encoder(config)
    tower = image_tower_section(trained)
    evaluation = evaluation_images(config)
    plain = _activations(trained, evaluation.images, tower)
    mirrored = _activations(trained, [ImageOps.mirror(im) for im in evaluation.images], tower)
    n = evaluation.drawings
    rows = {}
    for name, encoder in (("raw tower", raw), ("trained", trained)):
        a, b = _vectors(encoder, plain), _vectors(encoder, mirrored)
        for label, vectors in ((name, a), (f"{name}, mirror-averaged", unit(a + b))):
            rows[label] = _scores(vectors[:n], evaluation.ids, evaluation.views, (vectors[n:], evaluation.labels))
            print(label, json.dumps(rows[label]), flush=True)
    return rows


def write_markdown(report: dict) -> None:
    lines = ["# Mirror test-time averaging for the image encoder (`benchmarks/image_tta.py`)", ""]
    lines += [
        f"Measured {report['measured']}. Tuning seed {TUNING_SEED}; reported seeds "
        f"{', '.join(map(str, REPORT_SEEDS))}. The decision rule is in the script's docstring.",
        "",
    ]
    columns = ["google->twitter recall@1", "twitter->google recall@1", "unseen style recall@1", "identity mAP"]
    columns.append("fashion_mnist precision@10")
    for seed, rows in sorted(report["seeds"].items(), key=lambda kv: int(kv[0])):
        lines += [f"## seed {seed}", "", "| vectors | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{row[c]:.4f}" for c in columns) + " |" for name, row in rows.items()]
        lines.append("")
    (RESULTS / "image_tta.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[TUNING_SEED])
    args = parser.parse_args()
    record_runs(RESULTS / "image_tta.json", "seeds", args.seeds, run_seed, write_markdown)


if __name__ == "__main__":
    main()
