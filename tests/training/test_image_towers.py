"""The ImageNet towers load their packaged weights strictly and classify a real photo correctly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.core.manifest import ImageTower, OnnxIO
from app.inference.images import preprocess
from training.models.image import CONFIG_FILE, ImageEncoder, ImageEncoderConfig
from training.models.image_towers import load_tower, tower_spec
from training.models.saved_config import SavedConfigError

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


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2"])
def test_tower_recognises_a_tabby_cat(name: str) -> None:
    model = load_tower(name)  # load_state_dict(strict=True) inside
    with torch.inference_mode():
        probabilities = model(chelsea_pixels(name)).softmax(-1)[0]
    top = probabilities.topk(3).indices.tolist()
    assert top[0] in DOMESTIC_CATS
    assert float(probabilities[list(DOMESTIC_CATS)].sum()) > 0.8


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite2"])
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


def test_a_saved_encoder_loads_back_and_a_broken_config_names_its_field(tmp_path: Path) -> None:
    encoder = ImageEncoder(ImageEncoderConfig("mobilenet_v2", 1280, 0, "identity", trim_transparent=0.04)).eval()
    encoder.save(tmp_path / "model")
    assert ImageEncoder.load(tmp_path / "model").config == encoder.config
    config_file = tmp_path / "model" / CONFIG_FILE
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "unfreeze_blocks": None}))
    with pytest.raises(SavedConfigError, match="field 'unfreeze_blocks' must be an integer, not None"):
        ImageEncoder.load(tmp_path / "model")
    config_file.write_text(json.dumps({**saved, "projection_dim": "1280"}))
    with pytest.raises(SavedConfigError, match="field 'projection_dim' must be an integer or null, not '1280'"):
        ImageEncoder.load(tmp_path / "model")
    config_file.write_text(json.dumps({**saved, "unfreeze_blocks": 1, "head": "spatial"}))
    with pytest.raises(ValueError, match="weights do not match the saved config"):
        ImageEncoder.load(tmp_path / "model")
    for edit, message in (
        ({"projection_dim": 0}, "ImageEncoderConfig.projection_dim must be > 0, not 0"),
        ({"unfreeze_blocks": -1}, r"ImageEncoderConfig.unfreeze_blocks must be within \[0, 8\], not -1"),
        ({"head": "conv"}, "ImageEncoderConfig.head must be one of linear, spatial, not 'conv'"),
        ({"tower": "resnet50"}, "ImageEncoderConfig.tower must be one of mobilenet_v2, "),
    ):  # in range of type, out of range of meaning: one line naming the file, before any weights
        config_file.write_text(json.dumps({**saved, **edit}))
        with pytest.raises(SavedConfigError, match=f"^{config_file}: {message}"):
            ImageEncoder.load(tmp_path / "model")


def test_spatial_head_starts_at_the_linear_head_and_exports_with_parity(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The map path is zero-initialised (training starts from the raw features); once it has weights,
    the exported graph still computes exactly what PyTorch does, through the service's loader."""
    from app.core.manifest import Manifest
    from app.inference.image_model import ImageModel
    from app.inference.images import ImageLimits
    from tests.conftest import COCO_PHOTOS
    from training.export.image import export_image_model

    config = ImageEncoderConfig("mobilenet_v2", 1280, 1, "identity", head="spatial", spatial_channels=8)
    encoder = ImageEncoder(config).eval()
    pixels = chelsea_pixels("mobilenet_v2")
    with torch.inference_mode():
        np.testing.assert_allclose(encoder.pooled(pixels).numpy(), encoder.tower.pooled(pixels).numpy(), atol=1e-4)
        torch.nn.init.normal_(encoder.spatial[-1].weight, std=0.01)  # as if trained
        expected = encoder(pixels)[0].numpy()
    encoder.save(tmp_path / "trained")
    photos = sorted(COCO_PHOTOS.glob("*.jpg"))[:20]
    manifest = export_image_model(str(tmp_path / "trained"), tmp_path / "out", "spatial", photos, min_images=20)
    assert all(v.min_cosine > 0.9999 for v in manifest.parity if v.precision.value == "fp32")
    model = ImageModel(tmp_path / "out", Manifest.load(tmp_path / "out"))
    served = model.encode(pixels.numpy())
    assert float((served * expected).sum()) > 0.9999
    assert model.pixels(photos[0].read_bytes(), ImageLimits()).shape == (3, 224, 224)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_spatial_head_fits_the_towers_final_map(name: str) -> None:
    """Lite2's 260 px input leaves a 9x9 map under TF "same" padding (not 260 // 32 = 8)."""
    encoder = ImageEncoder(ImageEncoderConfig(name, 1280, 0, "identity", head="spatial")).eval()
    with torch.inference_mode():
        embedding = encoder.pooled(chelsea_pixels(name))
    assert embedding.shape == (1, 1280)
