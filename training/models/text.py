"""The text tower for training: a sentence-transformers model as an embed function.

An embed function maps one group of inputs to a (n, dim) tensor with gradients; the trainer and
GradCache only ever call that, so another tower (an image encoder) plugs in with its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EmbedFn = Callable[[list[Any]], torch.Tensor]  # inputs -> (n, dim)


def make_embed(model, device: torch.device | None = None, autocast: Callable[[], Any] | None = None) -> EmbedFn:  # type: ignore[no-untyped-def]
    """Texts -> (n, dim) float32 sentence embeddings of a sentence-transformers model (train mode as
    set), tokenised on the CPU and run on `device`, inside `autocast()` (a context factory) when given."""

    def embed(texts: list[str]) -> torch.Tensor:
        features = model.tokenize(texts)
        if device is not None:
            features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        if autocast is None:
            return model(features)["sentence_embedding"]  # (n, dim)
        with autocast():
            return model(features)["sentence_embedding"].float()

    return embed
