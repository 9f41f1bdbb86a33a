"""Hard-negative mining with FAISS over the corpus, using the model being trained.

For each query: rank the corpus by the current model, take non-positives from a rank window
[start, end), drop candidates scoring above `margin` x the query's lowest positive score (likely
unlabelled positives: the "false negative" filter of NV-Retriever's positive-aware mining,
Moreira et al. 2024), and sample `per_query` of the rest. With `rescore_model`, a cross-encoder
rescores the window and the same filter runs again on its relevance (sigmoid of the logit), against
`rescore_margin` x the lowest positive's: the bi-encoder misses unlabelled positives a
cross-encoder catches.
"""

from __future__ import annotations

import random

import faiss
import numpy as np

from training.config import MiningConfig
from training.data.beir import RetrievalDataset
from training.eval.retrieval import encode


def mine_negatives(model, dataset: RetrievalDataset, config: MiningConfig, seed: int = 0) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    doc_ids = list(dataset.corpus)
    doc_vectors = encode(model, [dataset.doc_text(d) for d in doc_ids])  # (n, dim)
    query_ids = [q for q in dataset.queries if dataset.qrels.get(q)]
    query_vectors = encode(model, [dataset.queries[q] for q in query_ids])  # (q, dim)
    index = faiss.IndexFlatIP(doc_vectors.shape[1])
    index.add(doc_vectors)
    start, end = config.rank_window
    scores, ranks = index.search(query_vectors, min(end, len(doc_ids)))  # (q, end)
    position = {d: i for i, d in enumerate(doc_ids)}
    rng = random.Random(seed)
    rescorer = None
    if config.rescore_model:
        from training.cross_encoder import load_classifier

        model_ce, tokenizer = load_classifier(config.rescore_model, 256)
        tokenizer.model_max_length = min(256, int(model_ce.config.max_position_embeddings))
        rescorer = (model_ce, tokenizer)
    negatives: dict[str, list[str]] = {}
    for row, query_id in enumerate(query_ids):
        positives = dataset.qrels[query_id]
        positive_rows = [position[d] for d in positives if d in position]
        lowest_positive = float(np.min(doc_vectors[positive_rows] @ query_vectors[row]))
        threshold = config.margin * lowest_positive
        candidates = [
            doc_ids[j]
            for rank, (j, score) in enumerate(zip(ranks[row], scores[row], strict=True))
            if rank >= start and j >= 0 and doc_ids[j] not in positives and score <= threshold
        ]
        if rescorer is not None and candidates:
            candidates = _rescore(rescorer, dataset, query_id, candidates, config.rescore_margin)
        negatives[query_id] = rng.sample(candidates, min(config.per_query, len(candidates)))
    return negatives


def _rescore(rescorer, dataset: RetrievalDataset, query_id: str, candidates: list[str], margin: float) -> list[str]:  # type: ignore[no-untyped-def]
    from training.cross_encoder import score_pairs

    model, tokenizer = rescorer
    query = dataset.queries[query_id]
    positives = list(dataset.qrels[query_id])
    logits = score_pairs(model, tokenizer, [(query, dataset.doc_text(d)) for d in positives + candidates])
    relevance = 1.0 / (1.0 + np.exp(-logits))  # (p + c,)
    threshold = margin * float(relevance[: len(positives)].min())
    return [d for d, r in zip(candidates, relevance[len(positives) :], strict=True) if r <= threshold]
