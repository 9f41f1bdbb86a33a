"""Export a `clip` model folder: a fixed text tower (an exported text folder, copied as `text.onnx`
with its tokenizer and its measured parity) beside `image.onnx` (ImageNet tower + the trained
text-space head, training/models/clip.py), one shared `dim`. Image parity is measured as for an
image model: real files through the service's decoder, each backend x precision vs PyTorch fp32.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from app.core.manifest import ClipSpec, HubnessSpec, Manifest, ModelKind, SourceInfo, VariantParity, sha256_file
from training.export.common import staged_folder, version
from training.export.image import (
    IMAGE_ONNX_FILE,
    MIN_PARITY_IMAGES,
    add_image_parity,
    export_image_onnx,
    parity_image_files,
    read_parity_images,
    tower_section,
)
from training.models.clip import (
    HUB_BANK_FILE,
    HUB_SPEC_FILE,
    IMAGE_HUB_BANK_FILE,
    IMAGE_HUB_SPEC_FILE,
    ClipImageEncoder,
)

log = logging.getLogger(__name__)

TEXT_ONNX_FILE = "text.onnx"


def export_clip_model(
    head_dir: Path,
    text_dir: Path,
    out_dir: Path,
    name: str,
    parity_folders: list[Path],
    eval_scores: dict[str, float] | None = None,
    temperature: float = 0.05,
    threads: int = 0,
    min_images: int = MIN_PARITY_IMAGES,
) -> Manifest:
    """`head_dir`: a head saved by training (or by `conse_head`); `text_dir`: an exported text model
    whose space the head was trained into. The folder at `out_dir` is replaced atomically."""
    text = Manifest.load(text_dir)
    if text.kind != ModelKind.TEXT or text.text is None:
        raise ValueError(f"{text_dir}: the text tower must be an exported text model, not {text.kind.value}")
    encoder = ClipImageEncoder.load(head_dir)
    if encoder.head.config.dim != text.embedding_dim:
        raise ValueError(f"head dim {encoder.head.config.dim} != text model dim {text.embedding_dim}")
    image = tower_section(encoder.head.config.tower, encoder.head.config.trim_transparent)
    files = parity_image_files(parity_folders)
    if len(files) < min_images:
        raise ValueError(f"parity needs at least {min_images} real images, got {len(files)}")
    pixels = read_parity_images(files, image)  # (n, 3, S, S)
    with staged_folder(out_dir, name) as staging:
        hashes = _copy_text_tower(text, text_dir, staging)
        export_image_onnx(encoder, staging / IMAGE_ONNX_FILE, image.input_size)
        hashes[IMAGE_ONNX_FILE] = sha256_file(staging / IMAGE_ONNX_FILE)
        hubness = _copy_hub_bank(head_dir, staging, hashes, HUB_BANK_FILE, HUB_SPEC_FILE)
        image_hubness = _copy_hub_bank(head_dir, staging, hashes, IMAGE_HUB_BANK_FILE, IMAGE_HUB_SPEC_FILE)
        manifest = Manifest(
            name=name,
            kind=ModelKind.CLIP,
            dim=text.embedding_dim,
            text=text.text.model_copy(update={"onnx_file": TEXT_ONNX_FILE}),
            image=image,
            files=hashes,
            clip=ClipSpec(temperature=temperature, hubness=hubness, image_hubness=image_hubness),
            source=SourceInfo(
                checkpoint=f"text: {text.source.checkpoint}; image: {encoder.head.config.tower} + {head_dir}",
                library="tessera.training",
                exported_with={"torch": torch.__version__, "onnx": version("onnx")},
            ),
            # The text tower is the text model unchanged: its measured variants hold as they are.
            parity=[_renamed(p, text.text.onnx_file) for p in text.parity if p.tower == "text"],
            eval_scores=eval_scores or {},
        )
        add_image_parity(staging, manifest, encoder, pixels, threads)
        manifest.save(staging)
    return manifest


def _copy_hub_bank(
    head_dir: Path, staging: Path, hashes: dict[str, str], bank_file: str, spec_file: str
) -> HubnessSpec | None:
    """A hubness bank the head's training saved into the folder, as the manifest will name it."""
    spec = head_dir / spec_file
    if not spec.is_file():
        return None  # a ConSE head, or trained without this correction
    shutil.copyfile(head_dir / bank_file, staging / bank_file)
    hashes[bank_file] = sha256_file(staging / bank_file)
    return HubnessSpec(file=bank_file, **json.loads(spec.read_text()))


def _renamed(parity: VariantParity, fp32_file: str) -> VariantParity:
    return parity.model_copy(update={"onnx_file": TEXT_ONNX_FILE}) if parity.onnx_file == fp32_file else parity


def _copy_text_tower(text: Manifest, text_dir: Path, staging: Path) -> dict[str, str]:
    """The text folder's files into `staging` (its fp32 graph renamed `text.onnx`); their hashes."""
    assert text.text is not None
    files = {}
    for rel, digest in text.files.items():
        target = TEXT_ONNX_FILE if rel == text.text.onnx_file else rel
        if target == IMAGE_ONNX_FILE:
            raise ValueError(f"{text_dir}: a text-model file named {rel} would clash with the image graph")
        (staging / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(text_dir / rel, staging / target)
        files[target] = digest
    return files
