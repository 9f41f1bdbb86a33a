"""The text tower for training: a sentence-transformers model as an embed function.

An embed function maps one group of inputs to a (n, dim) tensor with gradients; the trainer and
GradCache only ever call that, so another tower (an image encoder) plugs in with its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

EmbedFn = Callable[[list[Any]], torch.Tensor]  # inputs -> (n, dim)


def make_embed(model) -> EmbedFn:  # type: ignore[no-untyped-def]
    """Texts -> (n, dim) sentence embeddings of a sentence-transformers model (train mode as set)."""

    def embed(texts: list[str]) -> torch.Tensor:
        features = model.tokenize(texts)
        return model(features)["sentence_embedding"]  # (n, dim)

    return embed
