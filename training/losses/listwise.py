"""Listwise softmax loss over graded relevance.

Optimises: cross-entropy between the model's softmax over every document in the batch and a target
distribution over the query's *relevant* documents, softmax(grade / τ_target) over grades > 0, so a
higher grade must take more of the mass and every grade level counts (not just "relevant").
Documents with grade 0 (mined hard negatives, and the other queries' lists as in-batch negatives)
take no target mass. Scoring only a query's own short list lets the embedding space drift globally
(the loss cannot see the rest of the corpus) and collapses retrieval; the in-batch columns keep it
anchored, as InfoNCE's do.
Inputs: `queries` (b, dim); `documents` (n, dim), all lists of the batch concatenated; `grades`
(b, n): grade of document j for query i (0 = not relevant, -1 = ignore: padding, or a second copy of
the same document).
Paper: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet), ICML
2007; graded multi-level targets as in listwise dense-retrieval training (e.g. RankT5's listwise
softmax, Zhuang et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses._common import GradedListLoss, cosine_scores, graded_targets


class ListwiseSoftmaxLoss(GradedListLoss):
    def forward(self, queries: torch.Tensor, documents: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        scores = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        valid = grades >= 0  # (b, n)
        relevant = grades > 0  # (b, n)
        has_target = relevant.any(dim=1)  # (b,) a row without a relevant document teaches nothing
        targets = graded_targets(grades[has_target], self.target_temperature)  # (b', n)
        log_probs = F.log_softmax(scores.masked_fill(~valid, float("-inf"))[has_target], dim=1)  # (b', n)
        return -(targets * log_probs.masked_fill(~valid[has_target], 0.0)).sum(1).mean()
