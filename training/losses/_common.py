"""Helpers shared by the losses: cosine scores and a fixed or learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def cosine_scores(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """(b, dim) x (n, dim) -> (b, n) cosine similarities."""
    return F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T


class Temperature(nn.Module):
    """τ, fixed or learned in log space (as CLIP does), clamped to [0.01, 1]."""

    def __init__(self, value: float, learnable: bool = False) -> None:
        super().__init__()
        log_value = torch.tensor(math.log(value))
        if learnable:
            self.log_value = nn.Parameter(log_value)
        else:
            self.register_buffer("log_value", log_value)

    def forward(self) -> torch.Tensor:
        return self.log_value.exp().clamp(0.01, 1.0)
