"""Export an image encoder (ImageNet tower [+ projection head]) to a Tessera model folder, kind `image`.

The ONNX graph takes preprocessed pixels (batch, 3, S, S) and returns the L2-normalised embedding
and the pooled vector before normalisation. The preprocessing is written into the manifest's image
section and parity is measured through the service's own decoder and backends: real image files ->
`app.inference.images` -> each backend x precision, against the PyTorch module on the same pixels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from app.core.manifest import (
    ImageTower,
    Manifest,
    ModelKind,
    OnnxIO,
    SourceInfo,
    VariantParity,
    sha256_file,
)
from app.inference.image_model import PIXEL_INPUT, ImageModel
from app.inference.images import ImageLimits, load_pixels
from app.search.image_input import image_files
from training.export.common import measure_speeds, open_candidates, row_cosine, staged_folder, version
from training.models.image import ImageEncoder
from training.models.image_towers import tower_spec

log = logging.getLogger(__name__)

IMAGE_ONNX_FILE = "image.onnx"
# Parity needs at least this many real images (the bar for a served image variant).
MIN_PARITY_IMAGES = 500


def image_tower_section(encoder: ImageEncoder) -> ImageTower:
    """The manifest's image section: the tower's preprocessing, as data."""
    return tower_section(encoder.config.tower, encoder.config.trim_transparent)


def tower_section(tower: str, trim_transparent: float | None = None) -> ImageTower:
    """The image section of a model on the ImageNet tower `tower`: its preprocessing, as data."""
    spec = tower_spec(tower)
    return ImageTower(
        input_size=spec.input_size,
        resize_size=spec.resize_size,
        interpolation=spec.interpolation,  # type: ignore[arg-type]
        mean=list(spec.mean),
        std=list(spec.std),
        trim_transparent=trim_transparent,
        normalize=True,
        onnx=OnnxIO(inputs=[PIXEL_INPUT], output="image_embedding", unnormalized_output="pooled_embedding"),
        onnx_file=IMAGE_ONNX_FILE,
    )


def export_image_onnx(encoder: ImageEncoder, path: Path, input_size: int, opset: int = 17) -> None:
    sample = torch.zeros(2, 3, input_size, input_size)
    with torch.inference_mode():
        torch.onnx.export(
            encoder.eval(),
            (sample,),
            str(path),
            input_names=[PIXEL_INPUT],
            output_names=["image_embedding", "pooled_embedding"],
            dynamic_axes={PIXEL_INPUT: {0: "batch"}, "image_embedding": {0: "batch"}, "pooled_embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def parity_image_files(folders: list[Path], wanted: int = MIN_PARITY_IMAGES + 100) -> list[Path]:
    """About `wanted` real image files spread evenly over `folders` (recursively)."""
    images = [p for folder in folders for p in image_files(folder)]
    return images[:: max(1, len(images) // wanted)]


def read_parity_images(paths: list[Path], tower: ImageTower) -> np.ndarray:
    """Real image files through the service's decoder -> (n, 3, S, S)."""
    limits = ImageLimits()
    return np.stack([load_pixels(p.read_bytes(), tower, limits, i) for i, p in enumerate(paths)])


def export_image_model(
    source: str,
    out_dir: Path,
    name: str,
    parity_images: list[Path],
    eval_scores: dict[str, float] | None = None,
    threads: int = 0,
    min_images: int = MIN_PARITY_IMAGES,
) -> Manifest:
    """Export `source` (a tower name or a trained encoder folder) to `out_dir`, replaced atomically.
    `min_images`: fewer parity images are refused (tests lower it; a served export keeps 500)."""
    if len(parity_images) < min_images:
        raise ValueError(f"parity needs at least {min_images} real images, got {len(parity_images)}")
    encoder = ImageEncoder.from_source(source).eval()
    tower = image_tower_section(encoder)
    pixels = read_parity_images(parity_images, tower)  # (n, 3, S, S)
    with staged_folder(out_dir, name) as staging:
        export_image_onnx(encoder, staging / IMAGE_ONNX_FILE, tower.input_size)
        manifest = Manifest(
            name=name,
            kind=ModelKind.IMAGE,
            dim=encoder.dim,
            image=tower,
            files={IMAGE_ONNX_FILE: sha256_file(staging / IMAGE_ONNX_FILE)},
            source=SourceInfo(
                checkpoint=source,
                library="tessera.training",
                exported_with={"torch": torch.__version__, "onnx": version("onnx")},
            ),
            eval_scores=eval_scores or {},
        )
        add_image_parity(staging, manifest, encoder, pixels, threads)
        manifest.save(staging)
    return manifest


def add_image_parity(
    staging: Path, manifest: Manifest, module: torch.nn.Module, pixels: np.ndarray, threads: int = 0
) -> None:
    """Measure every image-tower variant of the staged folder against `module` (PyTorch fp32, which
    returns (normalised, unnormalised)) on the same `pixels` (n, 3, S, S); append to `manifest.parity`."""
    with torch.inference_mode():
        reference = np.concatenate(
            [module(torch.from_numpy(pixels[i : i + 64]))[1].numpy() for i in range(0, len(pixels), 64)]
        )  # (n, dim) unnormalised; cosine is scale-free
    models: list[ImageModel] = []
    opened = open_candidates(lambda b, p: ImageModel(staging, manifest, backend=b, precision=p, threads=threads))
    added = []
    for backend, precision, requires, model in opened:
        cosines = row_cosine(model.encode(pixels), reference)
        added.append(
            VariantParity(
                backend=backend,
                precision=precision,
                onnx_file=manifest.image.onnx_file if manifest.image else IMAGE_ONNX_FILE,
                tower="image",
                min_cosine=float(cosines.min()),
                mean_cosine=float(cosines.mean()),
                n_samples=len(pixels),
                reference="PyTorch fp32 on the same preprocessed pixels",
                requires=requires,
            )
        )
        models.append(model)
    for parity, speed in zip(added, measure_speeds(models, pixels[:256]), strict=True):
        parity.samples_per_s = speed
        log.info("%s: min cos %.6f mean %.6f, %.1f images/s", parity.key, parity.min_cosine, parity.mean_cosine, speed)
    manifest.parity.extend(added)
