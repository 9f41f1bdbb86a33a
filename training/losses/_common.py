"""Helpers shared by the losses: cosine scores and a fixed or learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.layouts import BatchLayout


def cosine_scores(queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
    """(b, dim) x (n, dim) -> (b, n) cosine similarities."""
    return F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T


def without_judged(logits: torch.Tensor, judged: torch.Tensor | None) -> torch.Tensor:
    """(b, n) logits with the cells `judged` (b, n) bool, documents judged relevant to the row's
    query other than its positive, at -inf: out of every softmax, neither positive nor negative."""
    return logits if judged is None else logits.masked_fill(judged, float("-inf"))


def row_mean(per_row: torch.Tensor, row_weights: torch.Tensor | None) -> torch.Tensor:
    """(b,) per-query losses -> their mean, weighted by `row_weights` (b,) when given (e.g. each
    positive's relevance grade, as nDCG's gain weighs it): sum(w * loss) / sum(w)."""
    if row_weights is None:
        return per_row.mean()
    weights = row_weights.to(per_row.dtype)
    return (weights * per_row).sum() / weights.sum()


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


def graded_targets(grades: torch.Tensor, target_temperature: float) -> torch.Tensor:
    """(b, n) grades -> (b, n) target distribution softmax(grade / τ_target) over the relevant
    (grade > 0) documents of each row, 0 elsewhere; rows without one come out NaN (callers skip them)."""
    logits = (grades.float() / target_temperature).masked_fill(grades <= 0, float("-inf"))
    return torch.softmax(logits, dim=1)


class GradedListLoss(nn.Module):
    """Base of the losses over graded lists: a (fixed or learned) score temperature and the target
    temperature of `graded_targets`."""

    layout = BatchLayout.GRADED_LISTS

    def __init__(
        self, temperature: float = 0.05, target_temperature: float = 1.0, learnable_temperature: bool = False
    ) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.target_temperature = target_temperature
