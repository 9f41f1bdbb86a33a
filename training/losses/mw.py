"""MW loss (Mann-Whitney U / AUC).

Optimises: the AUC of positive vs negative scores across the whole batch: binary cross-entropy
that each (positive pair, negative pair) is ranked correctly, on score differences:
    loss = mean over positives p, negatives n of  -log σ((s_p - s_n) / τ)
Comparisons run across queries too (global score separation, i.e. calibration), unless
`per_query=True`, which compares each query's positive only with its own negatives.
Inputs: `queries` (b, dim); `documents` (b * (1 + h), dim), positives first; every non-positive
query-document pair is a negative.
Paper: Sheikholeslami et al., "Optimizing What Matters: AUC-Driven Learning for Robust Neural
Retrieval" (arXiv 2510.00137, 2025).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._common import Temperature, cosine_scores
from training.losses.layouts import BatchLayout


class MannWhitneyLoss(nn.Module):
    layout = BatchLayout.PAIRS

    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False, per_query: bool = False) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.per_query = per_query

    def forward(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        batch = queries.shape[0]
        scores = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        rows = torch.arange(batch, device=queries.device)
        is_positive = torch.zeros_like(scores, dtype=torch.bool)
        is_positive[rows, rows] = True
        positives = scores[rows, rows]  # (b,)
        if self.per_query:
            differences = positives[:, None] - scores  # (b, n): each query's positive vs its row
            return F.softplus(-differences[~is_positive].view(batch, -1)).mean()
        negatives = scores[~is_positive]  # (b * (n - 1),)
        differences = positives[:, None] - negatives[None, :]  # (b, b * (n - 1))
        return F.softplus(-differences).mean()  # softplus(-x) = -log σ(x)
