"""BlockRank's auxiliary contrastive loss.

Optimises: multi-positive InfoNCE on BlockRank's in-context relevance distribution,
-log Σ_pos softmax(log s / τ): the signal token's attention should fall on the relevant documents.
Inputs: `scores` (N,) the relevance distribution over one prompt's documents (sums to 1);
`positives` the indices of the relevant ones.
Paper: "Scalable In-context Ranking with Generative Models" (BlockRank, 2025), auxiliary attention loss.
"""

from __future__ import annotations

import torch


def blockrank_loss(scores: torch.Tensor, positives: list[int], temperature: float = 0.05) -> torch.Tensor:
    logits = torch.log(scores.clamp_min(1e-12)) / temperature  # (N,)
    return -(torch.logsumexp(logits[positives], 0) - torch.logsumexp(logits, 0))
