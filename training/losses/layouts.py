"""Batch layouts: what a loss needs from a batch. Each loss declares one (`layout`), and the trainer
builds that layout without knowing which loss it feeds (see training/losses/registry.py)."""

from __future__ import annotations

from enum import StrEnum


class BatchLayout(StrEnum):
    # queries (b, dim), documents (b * (1 + h), dim): positives first, then hard negatives query-major
    PAIRS = "pairs"
    # PAIRS + `reference` (b, dim): the positives embedded by a frozen copy of the base model
    PAIRS_WITH_REFERENCE = "pairs+reference"
    # PAIRS + `teacher_scores` (b, n): a teacher's cosines of every query against every batch document
    PAIRS_WITH_TEACHER = "pairs+teacher"
    # queries (b, dim), documents (b * s, dim), grades (b, b * s): graded lists, -1 = ignore
    GRADED_LISTS = "graded_lists"
    # left (b, dim), right (b, dim), scores (b,): sentence pairs with a gold similarity
    SCORED_PAIRS = "scored_pairs"
    # queries, positives, negatives (b, dim) each, teacher margins (b,): margin distillation
    TRIPLETS_WITH_MARGINS = "triplets+margins"
    # student logits (n,) and teacher scores (n,) over one list: listwise distillation
    TEACHER_SCORES = "teacher_scores"
    # cross-encoder: logits (g, s) for groups of (query, document) pairs, targets (g, s) in [0, 1]
    SCORED_GROUPS = "scored_groups"
