"""A teacher bi-encoder's unit vectors of the texts a run's batches can hold (its training queries,
their positives and their mined negatives), encoded once and cached on disk under a key naming the
teacher and every text, so distillation costs one matrix product per step, and a second run with
the same data and teacher costs nothing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.data.beir import RetrievalDataset
from training.features import cached


@dataclass
class TeacherVectors:
    query_rows: dict[str, int]
    doc_rows: dict[str, int]
    query_vectors: torch.Tensor  # (q, dim) unit
    doc_vectors: torch.Tensor  # (d, dim) unit

    def scores(self, query_ids: list[str], doc_ids: list[str]) -> torch.Tensor:
        """(len(query_ids), len(doc_ids)) teacher cosines."""
        queries = self.query_vectors[[self.query_rows[q] for q in query_ids]]
        documents = self.doc_vectors[[self.doc_rows[d] for d in doc_ids]]
        return queries.float() @ documents.float().T


def teacher_vectors(
    load_model: Callable[[], Any],
    source: str,
    dataset: RetrievalDataset,
    negatives: dict[str, list[str]],
    cache_dir: Path,
) -> TeacherVectors:
    """`load_model` is called only on a cache miss (the teacher is large)."""
    query_ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
    wanted = {d for q in query_ids for d in dataset.qrels[q]} | {d for q in query_ids for d in negatives.get(q, [])}
    doc_ids = sorted(d for d in wanted if d in dataset.corpus)
    query_texts = [dataset.queries[q] for q in query_ids]
    doc_texts = [dataset.doc_text(d) for d in doc_ids]

    def encode(texts: list[str]) -> torch.Tensor:
        vectors = load_model().encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return torch.from_numpy(vectors).to(torch.float16)

    def key(kind: str, ids: list[str], texts: list[str]) -> str:
        digest = hashlib.sha256("\x00".join(ids + texts).encode()).hexdigest()
        return f"teacher|{source}|{kind}|{digest}"

    return TeacherVectors(
        {q: i for i, q in enumerate(query_ids)},
        {d: i for i, d in enumerate(doc_ids)},
        cached(cache_dir, key("queries", query_ids, query_texts), lambda: encode(query_texts)),
        cached(cache_dir, key("documents", doc_ids, doc_texts), lambda: encode(doc_texts)),
    )
