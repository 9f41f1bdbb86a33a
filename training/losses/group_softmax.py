"""Listwise softmax cross-entropy over a group of scored documents (a cross-encoder's group).

Optimises: cross-entropy between the softmax of one query's logits over its group (a graded
positive and its negatives) and the targets normalised to a distribution: the positive carries the
mass, so the model learns to put it first among its own negatives.
Inputs: `logits` (g, s) one row per group; `targets` (g, s) non-negative, each row with mass > 0.
Paper: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet, 2007);
the localised contrastive form of Gao et al., "Rethink Training of BERT Rerankers" (LCE, 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.layouts import BatchLayout


class GroupSoftmaxLoss(nn.Module):
    layout = BatchLayout.SCORED_GROUPS

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        target = targets / targets.sum(1, keepdim=True)  # (g, s)
        return -(target * F.log_softmax(logits, 1)).sum(1).mean()
