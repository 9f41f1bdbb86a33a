"""Fusing the dense and keyword rankings of one query into one ranking (hybrid search).

Both fusions take each list best first, as `(key, score)` pairs, and return every key found by
either, best first; ties go to the better dense rank, then the smaller key (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Ranking = list[tuple[int, float]]  # (key, score), best first


@dataclass(frozen=True, slots=True)
class Fused:
    key: int
    score: float
    dense: float | None  # the key's score in the dense list (None: not in it)
    keyword: float | None  # its BM25 score (None: not in the keyword list)


def reciprocal_rank(dense: Ranking, keyword: Ranking, dense_weight: float = 0.5, k: int = 60) -> list[Fused]:
    """Reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009):
    score(d) = 2w / (k + rank_dense(d)) + 2(1 - w) / (k + rank_keyword(d)), ranks from 1, a list
    that misses d adding nothing. Only ranks count, so BM25's unbounded scores and cosines need no
    common scale; k = 60 damps the head as in the paper. w = 0.5 is plain RRF."""
    weights = (2 * dense_weight, 2 * (1 - dense_weight))
    return _combine(dense, keyword, lambda rank, _score, which: weights[which] / (k + rank))


def convex(dense: Ranking, keyword: Ranking, dense_weight: float = 0.5) -> list[Fused]:
    """A convex combination of scores: w x dense' + (1 - w) x keyword', each list min-max scaled to
    [0, 1] over its own candidates (Bruch, Gai & Ingber, 2023, "An Analysis of Fusion Functions for
    Hybrid Retrieval"); a list that misses d adds 0."""
    scaled = [_min_max(dense), _min_max(keyword)]
    weights = (dense_weight, 1 - dense_weight)
    return _combine(dense, keyword, lambda rank, _score, which: weights[which] * scaled[which][rank - 1])


def _min_max(ranking: Ranking) -> list[float]:
    if not ranking:
        return []
    scores = [score for _, score in ranking]
    low, high = min(scores), max(scores)
    return [1.0 if high == low else (s - low) / (high - low) for s in scores]


def _combine(dense: Ranking, keyword: Ranking, contribution: Callable[[int, float, int], float]) -> list[Fused]:
    """Sum `contribution(rank, score, list)` (list 0: dense, 1: keyword) per key, best first."""
    total: dict[int, float] = {}
    scores: dict[int, list[float | None]] = {}
    for which, ranking in enumerate((dense, keyword)):
        for rank, (key, score) in enumerate(ranking, start=1):
            total[key] = total.get(key, 0.0) + contribution(rank, score, which)
            scores.setdefault(key, [None, None])[which] = score
    dense_rank = {key: rank for rank, (key, _) in enumerate(dense)}
    order = sorted(total, key=lambda key: (-total[key], dense_rank.get(key, len(dense)), key))
    return [Fused(key, total[key], *scores[key]) for key in order]
