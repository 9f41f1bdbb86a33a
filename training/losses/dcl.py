"""Decoupled contrastive loss (DCL).

Optimises: InfoNCE with the positive removed from the denominator, which decouples the positive
and negative terms (no "negative-positive coupling" that shrinks gradients for easy positives):
    loss_i = -s_ii / τ + log Σ_{j ≠ i} exp(s_ij / τ)
Symmetric option: adds the document -> query direction over the positives (each positive picks its
query among the batch's queries, that query again out of the denominator), as the paper's SimCLR
form does with both views as anchors.
Inputs: `queries` (b, dim); `documents` (b * (1 + h), dim), positives first; optionally `judged`
(b, n) bool, documents judged relevant to a row's query besides its positive, left out of its row
(and, symmetric, out of that document's column); optionally `row_weights` (b,), each row's weight in
the mean (its positive's grade: `grade_weighted`; symmetric: the positive's too).
Paper: Yeh et al., "Decoupled Contrastive Learning", ECCV 2022.
"""

from __future__ import annotations

import torch
from torch import nn

from training.losses._common import Temperature, cosine_scores, row_mean, without_judged
from training.losses.layouts import BatchLayout


class DecoupledContrastiveLoss(nn.Module):
    layout = BatchLayout.PAIRS

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, symmetric: bool = False) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.symmetric = symmetric

    def forward(
        self,
        queries: torch.Tensor,
        documents: torch.Tensor,
        judged: torch.Tensor | None = None,
        row_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = queries.shape[0]
        logits = without_judged(cosine_scores(queries, documents) / self.temperature(), judged)  # (b, n)
        loss = row_mean(_decoupled(logits), row_weights)
        if self.symmetric:  # (b, b): positive document -> query
            loss = (loss + row_mean(_decoupled(logits[:, :batch].T), row_weights)) / 2
        return loss


def _decoupled(logits: torch.Tensor) -> torch.Tensor:
    """(b, n) logits, row i's positive in column i -> (b,) -s_ii + log sum_{j != i} exp(s_ij)."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    positive = logits[rows, rows]  # (b,)
    negatives = logits.clone()
    negatives[rows, rows] = float("-inf")  # drop the positive from the denominator
    return -positive + torch.logsumexp(negatives, dim=1)
