"""The served-model protocol: one shape for every model the service loads.

`ServedModel` holds what every kind shares (name, manifest, capabilities, lifecycle, `describe()`);
`Embedder` adds `embed_text` (and, for image kinds, `embed_images`), `Scorer` adds `score`. The
registry builds them from a table keyed by kind, so a new kind adds a class and a row, not a branch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import UnsupportedInput
from app.core.manifest import Manifest, ModelKind, VariantParity
from app.inference.hubness import HubCorrection


class Capability(StrEnum):
    EMBED_TEXT = "embed:text"
    EMBED_IMAGE = "embed:image"
    SCORE = "score"


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) as the graph's served output (normalised if the model normalises)
    unnormalized: np.ndarray | None  # (n, dim) pooled before normalisation, if the graph gives it
    tokens: int


class ServedModel:
    """A model folder loaded for serving: its manifest, the variant it runs, its lifecycle."""

    capabilities: frozenset[Capability] = frozenset()
    query_variant: VariantParity | None = None  # a text model's variant for one input alone, if another

    def __init__(self, folder: Path, manifest: Manifest, variant: VariantParity | None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.variant = variant  # None: not an ONNX graph (BlockRank runs on PyTorch)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def kind(self) -> ModelKind:
        return self.manifest.kind

    def start(self) -> None:
        """Start background workers (batchers); called once the event loop runs."""

    async def stop(self) -> None:
        """Stop background workers; queued work fails."""

    @property
    def backend(self) -> str:
        return self.variant.backend.value if self.variant else "torch"

    @property
    def precision(self) -> str:
        return self.variant.precision.value if self.variant else "fp32"

    def describe(self) -> dict[str, Any]:
        """The same shape for every kind: identity, what it can do, how it runs, how exact it is."""
        m, v = self.manifest, self.variant
        return {
            "id": m.name,
            "object": "model",
            "owned_by": "tessera",
            "kind": m.kind.value,
            "capabilities": sorted(c.value for c in self.capabilities),
            "dim": m.dim,
            "similarity": m.similarity.value if m.dim else None,
            "max_tokens": m.text.max_tokens if m.text else None,
            "towers": self._towers(),
            "fingerprint": m.fingerprint,
            "backend": self.backend,
            "precision": self.precision,
            "parity": (
                {
                    "min_cosine": v.min_cosine,
                    "mean_cosine": v.mean_cosine,
                    "n_samples": v.n_samples,
                    "reference": v.reference,
                    "max_abs_error": v.max_abs_error,
                }
                if v
                else None
            ),
            "query_variant": self.query_variant.key if self.query_variant else None,
            "variants": [p.model_dump(mode="json", exclude_none=True) for p in m.parity],
            "blockrank": m.blockrank.model_dump(mode="json") if m.blockrank else None,
            "eval_scores": m.eval_scores,
            "source": m.source.checkpoint,
        }

    def _towers(self) -> dict[str, Any]:
        towers: dict[str, Any] = {}
        if self.manifest.text is not None:
            t = self.manifest.text
            towers["text"] = {
                "max_tokens": t.max_tokens,
                "pooling": t.pooling.value if t.pooling else None,
                "normalize": t.normalize,
            }
        if self.manifest.image is not None:
            i = self.manifest.image
            towers["image"] = {"input_size": i.input_size, "normalize": i.normalize}
        return towers


class Embedder(ServedModel, ABC):
    """A model that maps inputs into its vector space (`dim`)."""

    # Search's corrections for image hubs (a clip model that ships the banks), or None: for text
    # queries (a bank of training captions) and for image queries (the training images' vectors).
    hubness: HubCorrection | None = None
    image_hubness: HubCorrection | None = None

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @abstractmethod
    async def embed_text(self, texts: list[str], truncate: bool = True) -> EmbeddingResult:
        """(n, dim) vectors for `texts`; InputTooLong when one is over the limit and truncate is off."""

    async def embed_images(self, images: list[bytes], positions: list[int] | None = None) -> EmbeddingResult:
        """(n, dim) vectors for encoded images (JPEG, PNG, ...); InvalidImage / ImageTooLarge for bad
        ones, naming each by its `positions` entry (its place in the request)."""
        raise UnsupportedInput(
            f"model '{self.name}' embeds {self.kind.value} only, not images; choose an image or clip model"
        )


class Scorer(ServedModel, ABC):
    """A model that scores documents against a query (rerankers)."""

    @abstractmethod
    async def score(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, int]:
        """(n,) relevance per document (higher is better) and the tokens processed."""

    def fuse(self, first_stage: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The score search ranks by when the first stage's scores are known (search's `rerank`);
        a reranker that fuses the two overrides this. (n,) each."""
        return scores
