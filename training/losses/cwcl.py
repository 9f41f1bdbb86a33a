"""Continuously weighted contrastive loss (CWCL).

Optimises: cross-entropy of each query's softmax over the batch's positives against *soft*
targets: document j counts as a partial positive for query i in proportion to how similar it is to
query i's own positive, measured within the document modality (intra-modal similarity):
    w_ij = (1 + cos(d_i, d_j)) / 2 (w_ii = 1),  loss_i = -Σ_j w_ij log softmax_j(s_ij / τ) / Σ_j w_ij
The weights use detached embeddings (from `reference` if given, e.g. a frozen model, else the
current documents), so near-duplicates in a batch are not pushed apart as hard negatives.
Inputs: `queries` (b, dim); `documents` (b * (1 + h), dim), positives first; hard negatives enter
the softmax as extra columns with weight 0.
Paper: Srinivasa et al., "CWCL: Cross-Modal Transfer with Continuously Weighted Contrastive Loss",
NeurIPS 2023.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses._common import Temperature, cosine_scores


class CWCLLoss(nn.Module):
    def __init__(self, temperature: float = 0.05, learnable_temperature: bool = False) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)

    def forward(
        self, queries: torch.Tensor, documents: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = queries.shape[0]
        logits = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        positives = (reference if reference is not None else documents[:batch]).detach()  # (b, dim)
        weights = torch.zeros_like(logits)  # (b, n): hard-negative columns stay 0
        weights[:, :batch] = (1 + cosine_scores(positives, positives)) / 2  # (b, b) in [0, 1]
        weights[:, :batch].fill_diagonal_(1.0)
        log_probs = F.log_softmax(logits, dim=1)
        return (-(weights * log_probs).sum(1) / weights.sum(1)).mean()
