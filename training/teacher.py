"""A teacher bi-encoder's unit vectors by text, each text encoded once: kept in memory for the run
and on disk (append-only shards per teacher, keyed by each text's hash), so teacher-filtered mining,
distillation and every later run over the same texts (other splits, other configs) share one
encoding. The teacher is large (all-mpnet-base-v2 takes ~1 s per Cranfield abstract on 2 cores):
encoding a corpus once instead of once per use and per split is most of a teacher run's time.

The cache is keyed by the teacher's source string: a local teacher folder retrained in place needs
its cache folder removed."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data.beir import RetrievalDataset


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


MAX_SHARDS = 32


def _read(shard: Path) -> dict[str, np.ndarray]:
    with np.load(shard) as data:
        return dict(zip(data["keys"].tolist(), data["vectors"], strict=True))


class TeacherEncoder:
    """Texts -> (n, dim) float32 unit vectors of one teacher; `load_model` is called on the first
    text missing from the cache only."""

    def __init__(self, load_model: Callable[[], Any], source: str, cache_dir: Path) -> None:
        self._load_model = load_model
        self._model: Any = None
        self.folder = cache_dir / f"teacher-{_digest(source)[:16]}"
        self._vectors: dict[str, np.ndarray] | None = None  # text digest -> (dim,) float16

    def encode(self, texts: list[str]) -> np.ndarray:
        known = self._known()
        keys = [_digest(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in known}
        if missing:
            if self._model is None:
                self._model = self._load_model()
            vectors = self._model.encode(
                list(missing.values()), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            ).astype(np.float16)
            known.update(zip(missing, vectors, strict=True))
            self._write_shard(list(missing), vectors)
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([known[k] for k in keys]).astype(np.float32)

    def _known(self) -> dict[str, np.ndarray]:
        if self._vectors is None:
            self._vectors = {}
            for shard in sorted(self.folder.glob("shard-*.npz")):
                self._vectors.update(_read(shard))
        return self._vectors

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        """One shard per encoding, written whole then renamed: a reader never sees half a shard.
        Past MAX_SHARDS (mining encodes per query) the shards are merged into one, written before
        they are removed, so every vector is on disk at every moment."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._save(keys, vectors)
        shards = sorted(self.folder.glob("shard-*.npz"))
        if len(shards) <= MAX_SHARDS:
            return
        merged: dict[str, np.ndarray] = {}
        for shard in shards:  # from disk: another process's shards are kept too
            merged.update(_read(shard))
        self._save(list(merged), np.stack(list(merged.values())))
        for shard in shards:
            shard.unlink(missing_ok=True)

    def _save(self, keys: list[str], vectors: np.ndarray) -> None:
        name = f"shard-{uuid.uuid4().hex}"
        partial, final = self.folder / f"partial-{name}.npz", self.folder / f"{name}.npz"  # only `final` is read
        np.savez(partial, keys=np.array(keys), vectors=vectors)
        os.replace(partial, final)


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
    encoder: TeacherEncoder, dataset: RetrievalDataset, negatives: dict[str, list[str]]
) -> TeacherVectors:
    """The teacher's vectors of every text a run's batches can hold: its training queries, their
    positives and their mined negatives."""
    query_ids = sorted(q for q in dataset.queries if dataset.qrels.get(q))
    wanted = {d for q in query_ids for d in dataset.qrels[q]} | {d for q in query_ids for d in negatives.get(q, [])}
    doc_ids = sorted(d for d in wanted if d in dataset.corpus)
    queries = encoder.encode([dataset.queries[q] for q in query_ids])
    documents = encoder.encode([dataset.doc_text(d) for d in doc_ids])
    return TeacherVectors(
        {q: i for i, q in enumerate(query_ids)},
        {d: i for i, d in enumerate(doc_ids)},
        torch.from_numpy(queries).to(torch.float16),
        torch.from_numpy(documents).to(torch.float16),
    )
