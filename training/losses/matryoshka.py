"""Matryoshka wrapper: the inner loss on truncated prefixes of the embeddings as well.

Optimises: Σ_k w_k · inner(embeddings[..., :k]) over the configured dimensions (full size
included), so a vector truncated to `dimensions` and re-normalised (as the API's `dimensions`
parameter does) stays good.
Inputs: whatever the inner loss takes; tensors whose last axis is the embedding dimension are
truncated, others (grades, scores) passed through.
Paper: Kusupati et al., "Matryoshka Representation Learning", NeurIPS 2022.
"""

from __future__ import annotations

import torch
from torch import nn

from training.losses.layouts import BatchLayout


class MatryoshkaLoss(nn.Module):
    def __init__(self, inner: nn.Module, dims: list[int], weights: list[float] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.dims = sorted(set(dims), reverse=True)
        self.weights = weights or [1.0] * len(self.dims)

    @property
    def layout(self) -> BatchLayout:
        return self.inner.layout  # the inner loss's batch, truncated

    def forward(self, *embeddings: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        total = embeddings[0].new_zeros(())
        for dim, weight in zip(self.dims, self.weights, strict=True):
            total = total + weight * self.inner(*(e[..., :dim] for e in embeddings), **kwargs)
        return total
