"""Continuously weighted contrastive loss (CWCL).

Optimises: cross-entropy of each query's softmax over the batch's positives against *soft*
targets: document j counts as a partial positive for query i in proportion to how similar it is to
query i's own positive, measured within the document modality (intra-modal similarity).
The paper's weights are linear in the cosine, w_ij = (1 + cos(d_i, d_j)) / 2. On a one-domain corpus
(Cranfield's aerodynamics abstracts: cosines 0.3-0.6 between almost any two) those weights are
0.65-0.8 everywhere, the target is near-uniform and training collapses; so the default sharpens
them with a weight temperature τ_w:
    w_ij = exp((cos(d_i, d_j) - 1) / τ_w)   (w_ii = 1; τ_w = None gives the paper's linear form)
    loss_i = -Σ_j w_ij log softmax_j(s_ij / τ) / Σ_j w_ij
The weights use detached embeddings of the positives from `reference` (the trainer passes the frozen
base model's, as the paper takes them from a frozen tower; without it, the current documents'), so
near-duplicates in a batch are not pushed apart as hard negatives. Weights from the model being
trained feed back: documents drift together, the weights rise, scores flatten, retrieval collapses.
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
from training.losses.layouts import BatchLayout


class CWCLLoss(nn.Module):
    layout = BatchLayout.PAIRS_WITH_REFERENCE

    def __init__(
        self, temperature: float = 0.05, learnable_temperature: bool = False, weight_temperature: float | None = 0.1
    ) -> None:
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature)
        self.weight_temperature = weight_temperature

    def soft_targets(self, positives: torch.Tensor) -> torch.Tensor:
        """(b, dim) positives -> (b, b) weights in [0, 1] with 1 on the diagonal."""
        similarity = cosine_scores(positives, positives)  # (b, b)
        if self.weight_temperature is None:
            weights = (1 + similarity) / 2
        else:
            weights = torch.exp((similarity - 1) / self.weight_temperature)
        return weights.fill_diagonal_(1.0)

    def forward(
        self, queries: torch.Tensor, documents: torch.Tensor, reference: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = queries.shape[0]
        logits = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        positives = (reference if reference is not None else documents[:batch]).detach()  # (b, dim)
        weights = torch.zeros_like(logits)  # (b, n): hard-negative columns stay 0
        weights[:, :batch] = self.soft_targets(positives)  # (b, b)
        log_probs = F.log_softmax(logits, dim=1)
        return (-(weights * log_probs).sum(1) / weights.sum(1)).mean()
