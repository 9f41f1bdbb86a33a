"""Hard-negative mining with FAISS over the corpus, using the model being trained.

For each query: rank the corpus by the current model, take non-positives from a rank window
[start, end), drop candidates scoring above `margin` x the query's lowest positive score (likely
unlabelled positives: the "false negative" filter of NV-Retriever's positive-aware mining,
Moreira et al. 2024), and sample `per_query` of the rest. With a `rescorer` (a cross-encoder, passed
in by the caller), the window is rescored and the same filter runs again on its relevance (sigmoid
of the logit), against `rescore_margin` x the lowest positive's: the bi-encoder misses unlabelled
positives a cross-encoder catches. With a `teacher` (a stronger bi-encoder, also passed in), the
same filter runs on the teacher's cosines against `teacher_margin` (teacher-filtered mining, as in
NV-Retriever's "TopK-PercPos" with a teacher model).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from training.config import MiningConfig
from training.data.beir import RetrievalDataset
from training.eval.first_stage import CorpusIndex, corpus_of, judged_queries

# (query, document) pairs -> (n,) relevance logits (see training.models.cross_encoder.pair_scorer)
PairScorer = Callable[[list[tuple[str, str]]], np.ndarray]


def mine_negatives(  # type: ignore[no-untyped-def]
    model,
    dataset: RetrievalDataset,
    config: MiningConfig,
    seed: int = 0,
    rescorer: PairScorer | None = None,
    corpus: CorpusIndex | None = None,
    teacher: PairScorer | None = None,
) -> dict[str, list[str]]:
    """`corpus`: the corpus already encoded by `model` (skips encoding it again; ignored if it holds
    another corpus); `rescorer` gives relevance logits, `teacher` similarities (both for (query,
    document) pairs)."""
    corpus = corpus_of(model, dataset, corpus)
    query_ids = judged_queries(dataset)
    query_vectors = corpus.encode_queries([dataset.queries[q] for q in query_ids])  # (q, dim)
    start, end = config.rank_window
    scores, ranks = corpus.search(query_vectors, end)  # (q, end)
    doc_ids = corpus.doc_ids
    position = {d: i for i, d in enumerate(doc_ids)}
    rng = random.Random(seed)
    negatives: dict[str, list[str]] = {}
    for row, query_id in enumerate(query_ids):
        positives = dataset.qrels[query_id]
        positive_rows = [position[d] for d in positives if d in position]
        lowest_positive = float(np.min(corpus.doc_vectors[positive_rows] @ query_vectors[row]))
        threshold = config.margin * lowest_positive
        candidates = [
            doc_ids[j]
            for rank, (j, score) in enumerate(zip(ranks[row], scores[row], strict=True))
            if rank >= start and j >= 0 and doc_ids[j] not in positives and score <= threshold
        ]
        if rescorer is not None and candidates:
            candidates = _rescore(rescorer, dataset, query_id, candidates, config.rescore_margin, _sigmoid)
        if teacher is not None and candidates:
            candidates = _rescore(teacher, dataset, query_id, candidates, config.teacher_margin, _identity)
        negatives[query_id] = rng.sample(candidates, min(config.per_query, len(candidates)))
    return negatives


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def _identity(scores: np.ndarray) -> np.ndarray:
    return scores


def _rescore(
    rescorer: PairScorer,
    dataset: RetrievalDataset,
    query_id: str,
    candidates: list[str],
    margin: float,
    to_relevance: Callable[[np.ndarray], np.ndarray],
) -> list[str]:
    """The candidates whose relevance (by `rescorer`) stays at or under `margin` x the lowest positive's."""
    query = dataset.queries[query_id]
    positives = list(dataset.qrels[query_id])
    relevance = to_relevance(rescorer([(query, dataset.doc_text(d)) for d in positives + candidates]))  # (p + c,)
    threshold = margin * float(relevance[: len(positives)].min())
    return [d for d, r in zip(candidates, relevance[len(positives) :], strict=True) if r <= threshold]
