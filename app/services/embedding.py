"""Embedding: limits, model lookup, batching, Matryoshka truncation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from app.core.config import Settings
from app.core.errors import InputTooLong, InvalidDimensions, InvalidRequest, TooManyInputs, UnsupportedInput
from app.inference.quantize import FORMATS, QuantizedFormat, quantize
from app.inference.registry import ModelRegistry
from app.inference.served import Capability, Embedder, EmbeddingResult
from app.services.image_sources import ImageFetcher, image_bytes


@dataclass(frozen=True)
class ImageInput:
    """An image item of a request: base64, a data URI or (when enabled) an http(s) URL."""

    image: str


def check_input_count(count: int, settings: Settings, what: str = "inputs") -> None:
    if count > settings.max_inputs_per_request:
        raise TooManyInputs(f"{count} {what}; at most {settings.max_inputs_per_request} per request")


def check_input_chars(texts: list[str], settings: Settings, what: str = "input") -> None:
    """413 for an input over `max_input_chars`, before any tokenising (a 7 MB string would hold a
    tokenizer thread for seconds)."""
    limit = settings.max_input_chars
    for index, text in enumerate(texts):
        if len(text) > limit:
            raise InputTooLong(
                index, len(text), limit, f"{what} {index} has {len(text)} characters, more than the limit of {limit}"
            )


async def embed_texts(
    registry: ModelRegistry,
    settings: Settings,
    model: str | None,
    texts: list[str],
    truncate: bool = True,
    dimensions: int | None = None,
) -> tuple[Embedder, EmbeddingResult]:
    """Embed `texts` with `model` (the default when None) through its batcher."""
    check_input_count(len(texts), settings)
    check_input_chars(texts, settings)
    embedder = registry.embedder(model)
    if dimensions is not None and dimensions > embedder.dim:
        raise InvalidDimensions(f"dimensions={dimensions} exceeds the model's {embedder.dim}")
    return embedder, await embedder.embed_text(texts, truncate=truncate)


QUANTIZED_FORMATS = FORMATS  # encoding formats answered as integers


def check_quantizable(embedder: Embedder, fmt: str, dimensions: int | None, normalized: bool = True) -> None:
    """int8 / uint8 output needs the model's calibration ranges, for its full, normalised vectors."""
    if fmt not in ("int8", "uint8"):
        return
    if embedder.manifest.quantization is None:
        raise InvalidRequest(
            f"model '{embedder.name}' has no calibration ranges for {fmt} output (exported before them): "
            "re-export it with `python -m training export`, or ask for binary, ubinary or float"
        )
    if dimensions is not None and dimensions < embedder.dim:
        raise InvalidRequest(
            f"{fmt} output is calibrated on all {embedder.dim} dimensions: leave out `dimensions`, "
            "or ask for binary, ubinary or float"
        )
    if not normalized:
        raise InvalidRequest(f"{fmt} output is calibrated on normalised vectors: leave `normalize` true")


def quantized(embedder: Embedder, vectors: np.ndarray, fmt: QuantizedFormat) -> np.ndarray:
    """`vectors` (n, dim) in a quantised format (check_quantizable first)."""
    ranges = embedder.manifest.quantization.ranges if embedder.manifest.quantization else None
    return quantize(vectors, fmt, ranges)


def truncate_dims(vectors: np.ndarray, dimensions: int | None, renormalize: bool) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` components, then (optionally) re-normalise."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]  # (n, dimensions)
    if renormalize:
        cut = cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)
    return cut


def check_image_count(count: int, settings: Settings) -> None:
    if count > settings.max_images_per_request:
        raise TooManyInputs(f"{count} images; at most {settings.max_images_per_request} per request")


async def read_images(
    sources: list[str], positions: list[int], settings: Settings, fetcher: ImageFetcher
) -> list[bytes]:
    """Each image item's bytes (base64, data URI or fetched URL), concurrently; errors name the
    item by its position in the request."""
    return list(
        await asyncio.gather(*(image_bytes(v, settings, fetcher, i) for v, i in zip(sources, positions, strict=True)))
    )


def check_modalities(embedder: Embedder, texts: int, images: int) -> None:
    if images and Capability.EMBED_IMAGE not in embedder.capabilities:
        raise UnsupportedInput(f"model '{embedder.name}' embeds text only; image items need an image or clip model")
    if texts and Capability.EMBED_TEXT not in embedder.capabilities:
        raise UnsupportedInput(f"model '{embedder.name}' embeds images only; text items need a text or clip model")


async def embed_inputs(
    registry: ModelRegistry,
    settings: Settings,
    fetcher: ImageFetcher,
    model: str | None,
    inputs: list[str | ImageInput],
    truncate: bool = True,
    dimensions: int | None = None,
) -> tuple[Embedder, EmbeddingResult]:
    """Embed a mix of text and image items (images only for a model that embeds them), in order."""
    image_rows = [i for i, item in enumerate(inputs) if isinstance(item, ImageInput)]
    if not image_rows:
        return await embed_texts(registry, settings, model, inputs, truncate, dimensions)  # type: ignore[arg-type]
    check_input_count(len(inputs), settings)
    check_image_count(len(image_rows), settings)
    text_rows = [i for i, item in enumerate(inputs) if not isinstance(item, ImageInput)]
    texts: list[str] = [inputs[i] for i in text_rows]  # type: ignore[misc]
    check_input_chars(texts, settings)
    embedder = registry.embedder(model)
    check_modalities(embedder, len(texts), len(image_rows))
    if dimensions is not None and dimensions > embedder.dim:
        raise InvalidDimensions(f"dimensions={dimensions} exceeds the model's {embedder.dim}")
    sources = [inputs[i].image for i in image_rows]  # type: ignore[union-attr]
    images = await embedder.embed_images(await read_images(sources, image_rows, settings, fetcher), image_rows)
    if not texts:
        return embedder, images
    text = await embedder.embed_text(texts, truncate=truncate)
    return embedder, _merge(len(inputs), (image_rows, images), (text_rows, text))


def _merge(count: int, *parts: tuple[list[int], EmbeddingResult]) -> EmbeddingResult:
    """Rows of per-modality results back in request order."""
    dim = parts[0][1].vectors.shape[1]
    vectors = np.empty((count, dim), dtype=np.float32)
    with_unnormalized = all(result.unnormalized is not None for _, result in parts)
    unnormalized = np.empty((count, dim), dtype=np.float32) if with_unnormalized else None
    for rows, result in parts:
        vectors[rows] = result.vectors
        if unnormalized is not None:
            unnormalized[rows] = result.unnormalized
    return EmbeddingResult(vectors, unnormalized, sum(result.tokens for _, result in parts))
