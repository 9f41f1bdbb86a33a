"""Pairwise sigmoid loss (SigLIP).

Optimises: every (query, document) pair in the batch as an independent binary problem, positive on
the diagonal and negative elsewhere, on logits t * cos(q_i, d_j) + b with a learnable scale t (in
log space) and bias b:
    loss = -(1 / b) * Σ_i Σ_j log sigmoid(z_ij * (t * cos_ij + b)),   z_ij = 1 if i == j else -1
No softmax over the batch: no global normalisation, and the loss of a pair does not depend on what
else is in the batch. t starts at 10, b at -10 (the paper's init: the many negatives start with
low loss). Symmetric by construction.
Inputs: `queries` (b, dim); `documents` (b, dim), document i the positive of query i.
Paper: Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._common import cosine_scores
from training.losses.layouts import BatchLayout


class SigLIPLoss(nn.Module):
    layout = BatchLayout.PAIRS

    def __init__(self, scale: float = 10.0, bias: float = -10.0, learnable: bool = True) -> None:
        super().__init__()
        log_scale, bias_value = torch.tensor(math.log(scale)), torch.tensor(bias)
        if learnable:
            self.log_scale, self.bias = nn.Parameter(log_scale), nn.Parameter(bias_value)
        else:
            self.register_buffer("log_scale", log_scale)
            self.register_buffer("bias", bias_value)

    def forward(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        batch = queries.shape[0]
        logits = cosine_scores(queries, documents[:batch]) * self.log_scale.exp() + self.bias  # (b, b)
        signs = 2 * torch.eye(batch, device=logits.device, dtype=logits.dtype) - 1  # (b, b): +1 diag, -1 off
        return -F.logsigmoid(signs * logits).sum() / batch
