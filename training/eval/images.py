"""Image retrieval metrics over embedding matrices (cosine; rows L2-normalised here).

- `cross_style_recall`: each image of style A queries the gallery of style B (one image per identity);
  Recall@k = the share whose own identity is in the top k.
- `identity_map`: every image queries all the others (all styles); relevant = same identity; mean AP.
- `precision_at_k`: every image queries all the others; the share of the top k with its class
  (Fashion-MNIST same-class Precision@10).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def cross_style_recall(queries: np.ndarray, gallery: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """`queries[i]` and `gallery[i]` are the same identity in two styles: (n, d) each."""
    scores = _unit(queries) @ _unit(gallery).T  # (n, n)
    own = np.diag(scores)[:, None]  # (n, 1)
    rank = (scores > own).sum(1)  # (n,) 0 = first (ties count in the query's favour)
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def identity_map(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean average precision, every row a query against all other rows; relevant = same label."""
    unit = _unit(vectors)
    scores = unit @ unit.T  # (n, n)
    np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1)[:, :-1]  # (n, n - 1): drop the query itself (ranked last)
    relevant = labels[order] == labels[:, None]  # (n, n - 1)
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    counts = relevant.sum(1)
    ap = (precision * relevant).sum(1) / np.maximum(counts, 1)
    return float(ap[counts > 0].mean())


def precision_at_k(vectors: np.ndarray, labels: np.ndarray, k: int = 10, chunk: int = 2048) -> float:
    """Same-label share of each row's k nearest other rows, averaged."""
    unit = _unit(vectors)
    total = 0.0
    for start in range(0, len(unit), chunk):
        scores = unit[start : start + chunk] @ unit.T  # (c, n)
        rows = np.arange(scores.shape[0])
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]  # (c, k)
        total += float((labels[top] == labels[start : start + chunk, None]).sum())
    return total / (len(unit) * k)
