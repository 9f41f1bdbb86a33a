"""Retrieval metrics through pytrec_eval (the TREC reference implementation), not hand-written.

`run`: query id -> {doc id: score}; `qrels`: query id -> {doc id: graded relevance > 0}.
nDCG uses the graded relevance with trec_eval's linear gain; MRR@10 is reciprocal rank over the
top 10 only. Queries without a positive judgement are left out, as BEIR does.
"""

from __future__ import annotations

import numpy as np
import pytrec_eval

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

MEASURES = {"ndcg_cut.10", "recall.10", "recall.100", "map_cut.100", "recip_rank"}


def _top(run: Run, k: int) -> Run:
    return {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:k]) for q, docs in run.items()}


def per_query_metrics(run: Run, qrels: Qrels) -> dict[str, dict[str, float]]:
    """query id -> nDCG@10, MRR@10, Recall@10/100 and MAP@100, for the judged queries of `run`."""
    judged = {q: r for q, r in qrels.items() if r and q in run}
    if not judged:
        raise ValueError("no query of the run has a positive judgement")
    evaluator = pytrec_eval.RelevanceEvaluator(judged, MEASURES)
    full = evaluator.evaluate({q: run[q] for q in judged})
    top10 = evaluator.evaluate(_top({q: run[q] for q in judged}, 10))
    return {
        q: {
            "ndcg@10": full[q]["ndcg_cut_10"],
            "mrr@10": top10[q]["recip_rank"],
            "recall@10": full[q]["recall_10"],
            "recall@100": full[q]["recall_100"],
            "map@100": full[q]["map_cut_100"],
        }
        for q in judged
    }


def ir_metrics(run: Run, qrels: Qrels) -> dict[str, float]:
    """Mean nDCG@10, MRR@10, Recall@10/100 and MAP@100 over the judged queries of `run`."""
    per_query = per_query_metrics(run, qrels)
    names = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")
    means = {name: float(np.mean([scores[name] for scores in per_query.values()])) for name in names}
    return {**means, "queries": float(len(per_query))}


def dense_run(
    query_ids: list[str], query_vectors: np.ndarray, doc_ids: list[str], doc_vectors: np.ndarray, k: int = 100
) -> Run:
    """Exact cosine top-k (vectors already L2-normalised): (q, dim) @ (dim, n) -> (q, n)."""
    scores = query_vectors @ doc_vectors.T  # (q, n)
    top = np.argsort(-scores, axis=1)[:, :k]
    return {q: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, q in enumerate(query_ids)}


def top_k_ids(
    query_ids: list[str], query_vectors: np.ndarray, doc_ids: list[str], doc_vectors: np.ndarray, k: int
) -> dict[str, list[str]]:
    """`dense_run`'s top-k document ids per query, best first (a first stage's candidates)."""
    return {q: list(docs) for q, docs in dense_run(query_ids, query_vectors, doc_ids, doc_vectors, k).items()}


def ranked_run(ranking: dict[str, list[str]]) -> Run:
    """A run whose scores only encode the given order (best first): what a first stage alone scores."""
    return {q: {d: float(len(docs) - r) for r, d in enumerate(docs)} for q, docs in ranking.items()}
