"""Contrastive loss plus distillation of a stronger bi-encoder's in-batch score distribution.

Optimises: inner(queries, documents) + weight * mean_i KL(softmax(T_i / τ_t) || softmax(S_i / τ)),
where S (b, n) are the student's cosines of each query against every document of the batch
(positives and mined hard negatives, other queries' included) and T (b, n) the teacher's cosines of
the same texts (cached per dataset). The teacher grades every in-batch document, so an unlabelled
positive among the negatives is not pushed away as hard as the labels alone would push it, and the
student inherits the teacher's finer ordering of the negatives.
Inputs: `queries` (b, dim), `documents` (n, dim) in the PAIRS layout; `teacher_scores` (b, n);
`judged` (b, n) bool, if given, passed to the inner loss (the teacher's distribution keeps them).
Paper: the distillation of a stronger sentence encoder as in DSE/"Distilling Dense Representations
for Ranking using Tightly-Coupled Teachers" (Lin et al., 2020) and RocketQAv2's listwise KL (Ren et
al., 2021); the KL itself is training/losses/listwise_distillation.py.
"""

from __future__ import annotations

import torch
from torch import nn

from training.losses._common import Temperature, cosine_scores
from training.losses.layouts import BatchLayout
from training.losses.listwise_distillation import ListwiseDistillationLoss


class TeacherDistillationLoss(nn.Module):
    layout = BatchLayout.PAIRS_WITH_TEACHER

    def __init__(
        self, inner: nn.Module, weight: float = 1.0, temperature: float = 0.05, teacher_temperature: float = 0.05
    ) -> None:
        super().__init__()
        if inner.layout != BatchLayout.PAIRS:  # type: ignore[comparison-overlap]
            raise ValueError(f"distillation wraps a pair loss (infonce, dcl, mw, siglip), not a {inner.layout} loss")
        self.inner = inner
        self.weight = weight
        self.temperature = Temperature(temperature)
        self.kl = ListwiseDistillationLoss(teacher_temperature)

    def forward(
        self,
        queries: torch.Tensor,
        documents: torch.Tensor,
        teacher_scores: torch.Tensor,
        judged: torch.Tensor | None = None,
    ) -> torch.Tensor:
        student = cosine_scores(queries, documents) / self.temperature()  # (b, n)
        distilled = self.kl(student, teacher_scores).mean()  # KL per query row, (b,) -> ()
        inner = self.inner(queries, documents) if judged is None else self.inner(queries, documents, judged=judged)
        return inner + self.weight * distilled
