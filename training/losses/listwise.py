"""Listwise softmax loss over graded relevance.

Optimises: cross-entropy between the model's softmax over a query's candidate list and a target
distribution from graded labels, softmax(grade / τ_target) with ungraded (0) documents included as
negatives, so higher grades must score higher and every grade level counts (not just "relevant").
Inputs: `queries` (b, dim); `documents` (b * l, dim), query-major lists of l candidates; `grades`
(b, l) with graded relevance (0 = not relevant; padded slots -1, ignored).
Paper: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet), ICML
2007; graded multi-level targets as in listwise dense-retrieval training (e.g. RankT5's listwise
softmax, Zhuang et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._common import Temperature


class ListwiseSoftmaxLoss(nn.Module):
    def __init__(
        self, temperature: float = 0.05, target_temperature: float = 1.0, learnable_temperature: bool = False
    ) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.target_temperature = target_temperature

    def forward(self, queries: torch.Tensor, documents: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        batch, length = grades.shape
        docs = F.normalize(documents, dim=-1).view(batch, length, -1)  # (b, l, dim)
        scores = torch.einsum("bd,bld->bl", F.normalize(queries, dim=-1), docs) / self.temperature()  # (b, l)
        valid = grades >= 0  # (b, l)
        target_logits = (grades.float() / self.target_temperature).masked_fill(~valid, float("-inf"))
        targets = torch.softmax(target_logits, dim=1)  # (b, l)
        log_probs = F.log_softmax(scores.masked_fill(~valid, float("-inf")), dim=1)
        return -(targets * log_probs.masked_fill(~valid, 0.0)).sum(1).mean()
