"""A median filter after the trim, screened on raw Lite0 features (issue 13, the unseen style).

Rule (written before the run, benchmarks/image_reading.md): on the tuning split's held-out
codepoints with all three styles (seed = split_seed = 10), a 3x3 or 5x5 median filter applied to
the trimmed drawing (on its white background, before resizing) goes on to a trained tuning run only
if its raw unseen-style R@1 gains >= 0.02 over trimmed alone, with each seen direction within 0.02.

Usage: .venv/bin/python benchmarks/image_median.py   (writes benchmarks/results/image_median.{json,md})
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import ImageTower  # noqa: E402
from app.inference.images import ImageLimits, open_image, preprocess, to_rgb, trim_to_visible  # noqa: E402
from benchmarks.image_tta import config_for  # noqa: E402
from training.data.images import emoji_path, load_identities, split_identities  # noqa: E402
from training.eval.images import cross_style_recall  # noqa: E402
from training.export.image import image_tower_section  # noqa: E402
from training.image_training import _raw_encoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TUNING_SEED, STYLES, SIZES = 10, ("google", "twitter", "openmoji"), (0, 3, 5)


def pixels(image: Image.Image, tower: ImageTower, median: int) -> np.ndarray:
    """The served preprocessing, with a `median` x `median` filter after the trim (0: none)."""
    if median:
        assert tower.trim_transparent is not None
        trimmed = to_rgb(trim_to_visible(image, tower.trim_transparent), tuple(tower.background))  # type: ignore[arg-type]
        image = trimmed.filter(ImageFilter.MedianFilter(median))
    return preprocess(image, tower)


def main() -> None:
    torch.set_num_threads(2)
    config = config_for(TUNING_SEED)
    raw = _raw_encoder(config)
    tower = image_tower_section(raw)
    _, test = split_identities(load_identities(config.data), config.test_identities, config.split_seed)
    test = [i for i in test if all(s in i.styles for s in STYLES)]
    limits = ImageLimits()
    images = {s: [open_image(emoji_path(config.data, s, i.unified).read_bytes(), limits) for i in test] for s in STYLES}
    rows = {}
    for median in SIZES:
        vectors = {}
        for style in STYLES:
            batch = torch.from_numpy(np.stack([pixels(im, tower, median) for im in images[style]]))
            with torch.inference_mode():
                pooled = torch.cat([raw.pooled(batch[i : i + 64]) for i in range(0, len(batch), 64)]).numpy()
            vectors[style] = pooled

        def r1(a: str, b: str) -> float:
            return cross_style_recall(vectors[a], vectors[b], ks=(1,))["recall@1"]  # noqa: B023

        unseen = [r1("openmoji", s) for s in STYLES[:2]] + [r1(s, "openmoji") for s in STYLES[:2]]
        label = "trimmed (served)" if not median else f"trimmed + {median}x{median} median"
        rows[label] = {
            "G->T R@1": round(r1("google", "twitter"), 4),
            "T->G R@1": round(r1("twitter", "google"), 4),
            "unseen style R@1": round(float(np.mean(unseen)), 4),
        }
        print(label, rows[label], flush=True)
    report = {"measured": time.strftime("%Y-%m-%d %H:%M"), "codepoints": len(test), "rows": rows}
    (RESULTS / "image_median.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# A median filter after the trim, raw Lite0 features (`benchmarks/image_median.py`)",
        "",
        f"Measured {report['measured']}; tuning split (seed 10), {len(test)} held-out codepoints in all three "
        "styles. The rule is in the script's docstring.",
        "",
        "| input | G->T R@1 | T->G R@1 | unseen style R@1 |",
        "|---|---|---|---|",
    ]
    lines += [f"| {k} | " + " | ".join(f"{v:.4f}" for v in row.values()) + " |" for k, row in rows.items()]
    (RESULTS / "image_median.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
