"""Pointwise binary cross-entropy for a cross-encoder.

Optimises: each (query, document) logit towards its target relevance in [0, 1] (grade / top grade;
0 for negatives), independently of the other documents.
Inputs: `logits` (n,) one per pair; `targets` (n,) in [0, 1].
Paper: the monoBERT recipe, Nogueira & Cho, "Passage Re-ranking with BERT" (2019).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.layouts import BatchLayout


class PointwiseBCELoss(nn.Module):
    layout = BatchLayout.SCORED_GROUPS

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits.flatten(), targets.flatten())
