"""Listwise distillation: a reranker's distribution over one list matches a teacher's.

Optimises: KL(softmax(t / τ_t) || softmax(s / τ_s)) over the N candidates of one query, where t
are the teacher's scores (e.g. bi-encoder cosines; several teachers averaged) and s the student's
logits. Only the teacher's ordering and gaps within the list matter, not its scale, so a cosine
teacher can supervise BlockRank's attention scores. Used to train BlockRank on queries without
judgements (pseudo-queries) and beside the label loss on judged ones.
Inputs: `student_logits` (N,), `teacher_scores` (N,).
Paper: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach" (ListNet, 2007)
for the top-one probability KL; Hinton et al., "Distilling the Knowledge in a Neural Network" (2015)
for the temperatures.
"""

from __future__ import annotations

import torch
from torch import nn

from training.losses.layouts import BatchLayout


class ListwiseDistillationLoss(nn.Module):
    layout = BatchLayout.TEACHER_SCORES

    def __init__(self, teacher_temperature: float = 0.02) -> None:
        super().__init__()
        self.teacher_temperature = teacher_temperature

    def forward(self, student_logits: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
        target = torch.softmax(teacher_scores / self.teacher_temperature, dim=-1)  # (N,)
        log_student = torch.log_softmax(student_logits, dim=-1)  # (N,)
        return torch.sum(target * (torch.log(target.clamp_min(1e-12)) - log_student), dim=-1)
