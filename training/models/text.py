"""The text tower for training: a sentence-transformers model as an embed function.

An embed function maps one group of inputs to a (n, dim) tensor with gradients; the trainer and
GradCache only ever call that, so another tower (an image encoder) plugs in with its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

EmbedFn = Callable[[list[Any]], torch.Tensor]  # inputs -> (n, dim)


def make_embed(model, device: torch.device | None = None, autocast: Callable[[], Any] | None = None) -> EmbedFn:  # type: ignore[no-untyped-def]
    """Texts -> (n, dim) float32 sentence embeddings of a sentence-transformers model (train mode as
    set), tokenised on the CPU and run on `device`, inside `autocast()` (a context factory) when given."""

    # sentence-transformers 6 renamed `tokenize` to `preprocess` (same features; the old name logs a
    # deprecation on every call); 5.x, which pyproject allows, has only `tokenize`.
    preprocess = getattr(model, "preprocess", None) or model.tokenize

    def embed(texts: list[str]) -> torch.Tensor:
        features = preprocess(texts)
        if device is not None:
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        if autocast is None:
            return model(features)["sentence_embedding"]  # (n, dim)
        with autocast():
            return model(features)["sentence_embedding"].float()

    return embed


def similarity_scorer(encode: Callable[[list[str]], np.ndarray]) -> Callable[[list[tuple[str, str]]], np.ndarray]:
    """(query, document) pairs -> (n,) cosines of unit vectors by `encode` (a mining teacher's
    `TeacherEncoder.encode`, which encodes each distinct text once)."""

    def score(pairs: list[tuple[str, str]]) -> np.ndarray:
        texts = list(dict.fromkeys(t for pair in pairs for t in pair))
        vectors = dict(zip(texts, encode(texts), strict=True))
        return np.array([float(vectors[q] @ vectors[d]) for q, d in pairs], dtype=np.float32)

    return score
