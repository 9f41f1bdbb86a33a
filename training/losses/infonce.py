"""InfoNCE / multiple-negatives ranking loss.

Optimises: cross-entropy of picking each query's positive among all documents in the batch (its
positive, every other query's positive and every hard negative), on cosine scores / τ.
Symmetric option: adds the document -> query direction over the positives.
Inputs: `queries` (b, dim); `documents` (b * (1 + h), dim), positives first (see the package doc);
optionally `judged` (b, n) bool, documents judged relevant to a row's query besides its positive,
left out of its row (and, symmetric, out of that document's column); optionally `row_weights` (b,),
each query's weight in the mean (its positive's grade: `grade_weighted`; symmetric: the positive's too).
Paper: van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
in-batch + hard negatives as in Henderson et al. 2017 and Karpukhin et al., DPR (2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._common import Temperature, cosine_scores, row_mean, without_judged
from training.losses.layouts import BatchLayout


class InfoNCELoss(nn.Module):
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
        logits = without_judged(cosine_scores(queries, documents) / self.temperature(), judged)  # (b, b * (1 + h))
        targets = torch.arange(batch, device=queries.device)  # (b,) query i -> document i
        loss = row_mean(F.cross_entropy(logits, targets, reduction="none"), row_weights)
        if self.symmetric:  # (b, b): document -> query
            backward = F.cross_entropy(logits[:, :batch].T, targets, reduction="none")
            loss = (loss + row_mean(backward, row_weights)) / 2
        return loss
