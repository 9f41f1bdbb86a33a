"""Margin-MSE distillation from a teacher (e.g. a cross-encoder).

Optimises: the student's score margin between a positive and a negative should equal the
teacher's:  loss = mean((s(q, d+) - s(q, d-)) - (t(q, d+) - t(q, d-)))².
Only margins are matched, so the teacher's score scale need not match cosine similarities.
Inputs: `queries` (b, dim), `positives` (b, dim), `negatives` (b, dim); `teacher_margins` (b,).
Paper: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation" (2020).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.layouts import BatchLayout


class MarginMSELoss(nn.Module):
    layout = BatchLayout.TRIPLETS_WITH_MARGINS

    def forward(
        self, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, teacher_margins: torch.Tensor
    ) -> torch.Tensor:
        q = F.normalize(queries, dim=-1)
        student = (q * F.normalize(positives, dim=-1)).sum(-1) - (q * F.normalize(negatives, dim=-1)).sum(-1)  # (b,)
        return F.mse_loss(student, teacher_margins)
