"""Reranking: limits, reranker lookup, scoring, ordering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.core.config import Settings
from app.inference.registry import ModelRegistry
from app.services.embedding import check_input_chars, check_input_count


@dataclass
class RerankOutcome:
    model: str
    scores: np.ndarray  # (n,) relevance per document, in the documents' order
    tokens: int

    def order(self, top_n: int | None = None) -> np.ndarray:
        """Document indices best first (stable among ties), cut to `top_n`."""
        return np.argsort(-self.scores, kind="stable")[: top_n or len(self.scores)]


async def rerank(
    registry: ModelRegistry,
    settings: Settings,
    model: str | None,
    query: str,
    documents: list[str],
    max_tokens_per_doc: int | None = None,
    truncate: bool = True,
    first_stage: np.ndarray | None = None,
) -> RerankOutcome:
    """Relevance of each document to `query` from the reranker `model` (the default when None);
    with the first stage's scores (search), fused as the reranker says."""
    check_input_count(len(documents), settings, "documents")
    check_input_chars([query], settings, "query")
    check_input_chars(documents, settings, "document")
    scorer = registry.scorer(model)
    scores, tokens = await scorer.score(query, documents, max_tokens_per_doc, truncate)
    if first_stage is not None:
        scores = scorer.fuse(first_stage, scores)
    return RerankOutcome(scorer.name, scores, tokens)
