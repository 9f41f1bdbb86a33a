"""CoSENT loss for graded sentence-pair similarity (STS scores).

Optimises: for every two pairs (i, j) in the batch with gold score y_i > y_j, the cosine of pair
i should exceed that of pair j:  loss = log(1 + Σ_{y_i > y_j} exp(λ (cos_j - cos_i))).
A ranking loss over pairs, so it is insensitive to the scale of the gold scores.
Inputs: `left`, `right` (b, dim) embeddings of each pair's sentences; `scores` (b,) gold scores.
Paper: Su, "CoSENT" (2022, kexue.fm/archives/8847); sentence-transformers' CoSENTLoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.layouts import BatchLayout


class CoSENTLoss(nn.Module):
    layout = BatchLayout.SCORED_PAIRS

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, left: torch.Tensor, right: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        cosines = F.cosine_similarity(left, right, dim=-1) * self.scale  # (b,)
        differences = cosines[None, :] - cosines[:, None]  # (b, b): [i, j] = cos_j - cos_i
        should_rank = scores[:, None] > scores[None, :]  # (b, b): y_i > y_j
        differences = differences.masked_fill(~should_rank, float("-inf"))
        zero = torch.zeros(1, device=left.device, dtype=differences.dtype)  # the "1 +" inside the log
        return torch.logsumexp(torch.cat([zero, differences.flatten()]), dim=0)
