"""The ImageNet towers load their packaged weights strictly and classify a real photo correctly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.core.manifest import ImageTower, OnnxIO
from app.inference.images import preprocess
from training.models.image import ImageEncoder, ImageEncoderConfig
from training.models.image_towers import load_tower, tower_spec

# ImageNet classes of a domestic cat: 281 tabby, 282 tiger cat, 285 Egyptian cat.
DOMESTIC_CATS = {281, 282, 285}


def chelsea_pixels(name: str) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    spec = tower_spec(name)
    tower = ImageTower(
        input_size=spec.input_size,
        resize_size=spec.resize_size,
        mean=list(spec.mean),
        std=list(spec.std),
        onnx=OnnxIO(inputs=["pixel_values"]),
    )
    return torch.from_numpy(preprocess(Image.fromarray(skimage_data.chelsea()), tower)[None])


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_tower_recognises_a_tabby_cat(name: str) -> None:
    model = load_tower(name)  # load_state_dict(strict=True) inside
    with torch.inference_mode():
        probabilities = model(chelsea_pixels(name)).softmax(-1)[0]
    top = probabilities.topk(3).indices.tolist()
    assert top[0] in DOMESTIC_CATS
    assert float(probabilities[list(DOMESTIC_CATS)].sum()) > 0.8


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0"])
def test_cached_activations_reproduce_the_full_forward(name: str) -> None:
    encoder = ImageEncoder(ImageEncoderConfig(name, projection_dim=64, unfreeze_blocks=2)).eval()
    pixels = chelsea_pixels(name)
    with torch.inference_mode():
        full = encoder.pooled(pixels)
        split = encoder.from_activations(encoder.frozen_activations(pixels))
    np.testing.assert_allclose(full.numpy(), split.numpy(), atol=1e-5)
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert "projection.weight" in trainable and len(trainable) > 1
    assert not any(p.requires_grad for n, p in encoder.named_parameters() if n.startswith("tower.") and n[6:8] == "0.")


def test_identity_head_starts_at_the_raw_features() -> None:
    encoder = ImageEncoder(ImageEncoderConfig("mobilenet_v2", 1280, 0, "identity")).eval()
    with torch.inference_mode():
        features = encoder.tower.pooled(chelsea_pixels("mobilenet_v2"))
        np.testing.assert_allclose(encoder.project(features).numpy(), features.numpy(), atol=1e-6)
