"""Listwise 1-D Wasserstein loss over graded relevance.

Optimises: the 1-D Wasserstein (earth mover's) distance, along the relevance-grade axis, between
the model's softmax over a query's documents and the target distribution the graded labels give
(softmax(grade / τ_target) over the *relevant* documents, as the listwise softmax loss uses). Both
distributions are projected onto the grades: P(g) is the mass on documents of grade g. Moving mass
between grades g and g' costs |g - g'|, so probability on a grade-0 document, or a grade-1 document
preferred to a grade-3 one, costs in proportion to how wrong the level is, where cross-entropy only
sees "not the target". In 1-D the distance is the L1 gap of the cumulative distributions:
    W1 = sum_k |F_p(g_k) - F_q(g_k)| * (g_{k+1} - g_k)   over the grade levels g_0 < g_1 < ...
Documents of one grade are interchangeable (ties do not matter to a ranking).
Inputs: `queries` (b, dim); `documents` (n, dim), every list of the batch (other queries' lists are
in-batch grade-0 documents); `grades` (b, n): grade of document j for query i, 0 = not relevant,
-1 = ignore (padding, repeats). Rows without a relevant document are skipped.
Paper: Esfandiarpoor, Zerveas, Bach, "Beyond Contrastive Learning: Synthetic Data Enables List-wise
Training with Multiple Levels of Relevance" (2025), which trains with a Wasserstein loss on graded
lists; this is its 1-D form on the grade axis.
"""

from __future__ import annotations

import torch

from training.losses._common import GradedListLoss, cosine_scores, graded_targets


class WassersteinListwiseLoss(GradedListLoss):
    def forward(self, queries: torch.Tensor, documents: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        valid = grades >= 0  # (b, n)
        relevant = grades > 0  # (b, n)
        rows = relevant.any(dim=1)  # (b,)
        if not rows.any():
            return queries.sum() * 0.0  # nothing to learn, still a graph
        scores = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        probs = torch.softmax(scores.masked_fill(~valid, float("-inf"))[rows], dim=1)  # (b', n)
        targets = graded_targets(grades[rows], self.target_temperature)  # (b', n)
        kept = grades[rows]  # (b', n)
        levels = torch.unique(kept[kept >= 0])  # (G,) ascending grade levels
        # mass at or below each level: (b', G), via a (b', n, G) indicator
        at_or_below = (kept.unsqueeze(-1) <= levels) & (kept.unsqueeze(-1) >= 0)
        cdf_model = (probs.unsqueeze(-1) * at_or_below).sum(1)
        cdf_target = (targets.unsqueeze(-1) * at_or_below).sum(1)
        gaps = (levels[1:] - levels[:-1]).float()  # (G - 1,)
        distance = ((cdf_model - cdf_target)[:, :-1].abs() * gaps).sum(1)  # (b',)
        return distance.mean()
