"""Image-text retrieval and zero-shot classification metrics over embedding matrices.

- `retrieval_recall`: each query's Recall@k against a gallery where a query may have several
  relevant items (a photo has five captions; identical clip-art captions share their images).
- `zero_shot_accuracy`: top-1 of each image's nearest class prompt.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def retrieval_recall(
    queries: np.ndarray, gallery: np.ndarray, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@k: the share of queries with at least one relevant gallery row in their top k.
    `queries` (q, d), `gallery` (g, d), `relevant[i]` the gallery rows relevant to query i."""
    scores = unit(queries) @ unit(gallery).T  # (q, g)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : max(ks)]  # (q, max k)
    first_hit = np.array(
        [
            next((rank for rank, row in enumerate(ranked) if row in rel), len(ranked))
            for ranked, rel in zip(top.tolist(), relevant, strict=True)
        ]
    )  # (q,) rank of the best relevant row (max k when none is in the top)
    return {f"recall@{k}": float((first_hit < k).mean()) for k in ks}


def zero_shot_accuracy(images: np.ndarray, prompts: np.ndarray, labels: np.ndarray) -> float:
    """`images` (n, d), `prompts` (classes, d) in label order, `labels` (n,) -> top-1 accuracy."""
    predicted = np.argmax(unit(images) @ unit(prompts).T, axis=1)
    return float((predicted == labels).mean())
