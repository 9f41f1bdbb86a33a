"""Embedding: limits, model lookup, batching, Matryoshka truncation."""

from __future__ import annotations

import numpy as np

from app.core.config import Settings
from app.core.errors import InputTooLong, InvalidDimensions, TooManyInputs
from app.inference.registry import ModelRegistry
from app.inference.served import Embedder, EmbeddingResult


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


def truncate_dims(vectors: np.ndarray, dimensions: int | None, renormalize: bool) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` components, then (optionally) re-normalise."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]  # (n, dimensions)
    if renormalize:
        cut = cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)
    return cut
