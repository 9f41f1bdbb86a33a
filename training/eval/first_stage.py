"""The first stage: a bi-encoder's vectors of a corpus, and the rankings they give.

Evaluation, hard-negative mining, the cross-encoder's and BlockRank's candidates and the teachers
all rank a corpus with a bi-encoder; `CorpusIndex` encodes it once and answers all of them."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from training.data.beir import RetrievalDataset
from training.eval.metrics import Run, dense_run, top_k_ids


def encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(n, dim) L2-normalised float32 from a sentence-transformers model, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        vectors = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True)
    finally:
        model.train(was_training)
    return vectors.astype(np.float32)


@dataclass
class CorpusIndex:
    model: object  # the sentence-transformers bi-encoder that made the vectors
    doc_ids: list[str]
    doc_vectors: np.ndarray  # (n, dim), L2-normalised

    @classmethod
    def build(cls, model, dataset: RetrievalDataset) -> CorpusIndex:  # type: ignore[no-untyped-def]
        doc_ids = list(dataset.corpus)
        return cls(model, doc_ids, encode(model, [dataset.doc_text(d) for d in doc_ids]))

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return encode(self.model, texts)  # (q, dim)

    def run(self, query_ids: list[str], texts: list[str], k: int = 100) -> Run:
        """Exact cosine top-k per query, with scores."""
        return dense_run(query_ids, self.encode_queries(texts), self.doc_ids, self.doc_vectors, k=k)

    def top_k(self, query_ids: list[str], texts: list[str], k: int) -> dict[str, list[str]]:
        """The top-k document ids per query, best first: a first stage's candidates."""
        return top_k_ids(query_ids, self.encode_queries(texts), self.doc_ids, self.doc_vectors, k)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each (q, k), by inner product over the corpus (FAISS, exact)."""
        index = faiss.IndexFlatIP(self.doc_vectors.shape[1])
        index.add(self.doc_vectors)
        return index.search(query_vectors, min(k, len(self.doc_ids)))

    def vectors_by_id(self) -> dict[str, np.ndarray]:
        return dict(zip(self.doc_ids, self.doc_vectors, strict=True))


def corpus_of(model, dataset: RetrievalDataset, known: CorpusIndex | None = None) -> CorpusIndex:  # type: ignore[no-untyped-def]
    """`known` when it holds `dataset`'s corpus (the caller vouches that `model` made it with its
    present weights), else the corpus encoded by `model` now."""
    if known is not None and known.doc_ids == list(dataset.corpus):
        return known
    return CorpusIndex.build(model, dataset)


class BaseCorpus:
    """A corpus as one model encodes it in its present weights: encoded on first use, then shared by
    whatever ranks that corpus before the weights change (a run's evaluation of the base model, its
    mining and its first validation score use one encoding instead of three)."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model = model
        self._index: CorpusIndex | None = None

    def index(self, dataset: RetrievalDataset) -> CorpusIndex:
        self._index = corpus_of(self.model, dataset, self._index)
        return self._index


def judged_queries(dataset: RetrievalDataset) -> list[str]:
    """Query ids with at least one positive judgement (BEIR evaluates only these)."""
    return [q for q in dataset.queries if dataset.qrels.get(q)]
