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
from training.eval.images import cross_style_recall, identity_map, precision_at_k  # noqa: E402
from training.export.image import image_tower_section  # noqa: E402
from training.image_training import _activations, _raw_encoder, train_image_encoder  # noqa: E402
from training.models.image import ImageEncoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING_SEED, REPORT_SEEDS = 10, (0, 1, 2)
SEEN, UNSEEN = ("google", "twitter"), "openmoji"


def config_for(seed: int) -> ImageTrainConfig:
    """The served recipe on `seed`'s split, as image_wise.py trains it, in a run folder of its own."""
    return wise_config(seed).model_copy(update={"name": f"bench-image-tta{seed}"})


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _vectors(encoder: ImageEncoder, activations: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        parts = [
            encoder.from_activations(activations[i : i + 512].float()).numpy() for i in range(0, len(activations), 512)
        ]
    return _unit(np.concatenate(parts))


def _scores(vectors: np.ndarray, ids: list[str], views: list[str], fmnist: tuple[np.ndarray, np.ndarray]) -> dict:
    row = {(i, v): n for n, (i, v) in enumerate(zip(ids, views, strict=True))}
    styles = [*SEEN, UNSEEN]
    out: dict[str, float] = {}
    unseen = []
    for a in styles:
        for b in styles:
            if a == b:
                continue
            common = sorted({i for i, v in row if v == a} & {i for i, v in row if v == b})
            r1 = cross_style_recall(vectors[[row[i, a] for i in common]], vectors[[row[i, b] for i in common]], ks=(1,))
            if a in SEEN and b in SEEN:
                out[f"{a}->{b} recall@1"] = round(r1["recall@1"], 4)
            else:
                unseen.append(r1["recall@1"])
    out["unseen style recall@1"] = round(float(np.mean(unseen)), 4)
    out["identity mAP"] = round(identity_map(vectors, np.asarray(ids)), 4)
    out["fashion_mnist precision@10"] = round(precision_at_k(fmnist[0], fmnist[1]), 4)
    return out


def run_seed(seed: int) -> dict[str, dict[str, float]]:
    config = config_for(seed)
    folder = config.runs_dir / config.name / "model"
    if not (folder / "image_encoder.pt").is_file():
        train_image_encoder(config)
    trained = ImageEncoder.load(folder)
    raw = _raw_encoder(config)
    tower = image_tower_section(trained)
    identities = load_identities(config.data)
    _, test_ids = split_identities(identities, config.test_identities, config.split_seed)
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
    clothes = [Image.fromarray(p, "L") for p in pixels[: config.fashion_mnist_limit]]
    labels = labels[: config.fashion_mnist_limit]
    plain = _activations(trained, images + clothes, tower)
    mirrored = _activations(trained, [ImageOps.mirror(im) for im in images + clothes], tower)
    n = len(images)
    rows = {}
    for name, encoder in (("raw tower", raw), ("trained", trained)):
        a, b = _vectors(encoder, plain), _vectors(encoder, mirrored)
        for label, vectors in ((name, a), (f"{name}, mirror-averaged", _unit(a + b))):
            rows[label] = _scores(vectors[:n], ids, views, (vectors[n:], labels))
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
