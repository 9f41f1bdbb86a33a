"""Loads every model folder under `models_dir` and owns one batcher per served model."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core import metrics
from app.core.config import Settings
from app.core.manifest import MANIFEST_FILE, Manifest, ModelKind, VariantParity
from app.inference.batcher import DynamicBatcher
from app.inference.cross_encoder import CrossEncoderModel
from app.inference.in_context import InContextReranker
from app.inference.text_model import TextModel
from app.inference.tokenizer import Tokenized
from app.inference.variants import choose_variant

log = logging.getLogger(__name__)

# Requests with more texts than this tokenise on a worker thread instead of the event loop.
INLINE_TOKENIZE_MAX = 16


def make_batcher(
    name: str, forward: Callable[[list[np.ndarray]], np.ndarray], row_shape: tuple[int, int], settings: Settings
) -> DynamicBatcher:
    """One batcher per served model, sized by the settings (token budget, queue, streams)."""
    return DynamicBatcher(
        name,
        forward,
        row_shape,
        token_budget=settings.batch_token_budget,
        max_batch_size=settings.max_batch_size,
        max_queue=settings.max_queue,
        workers=settings.streams,
    )


@dataclass
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) as the graph's served output (normalised if the model normalises)
    unnormalized: np.ndarray | None  # (n, dim) pooled before normalisation, if the graph gives it
    tokens: int


class TextEncoder:
    """A served text model: tokenizer + session + dynamic batcher."""

    def __init__(self, folder: Path, manifest: Manifest, variant: VariantParity, settings: Settings) -> None:
        self.manifest = manifest
        self.variant = variant
        self.model = TextModel(folder, manifest, variant, threads=settings.threads, streams=settings.streams)
        self.batcher = make_batcher(
            manifest.name, self.model.forward, (len(self.model.outputs), manifest.dim), settings
        )
        self._tokens = metrics.TOKENS.labels(manifest.name)

    @property
    def name(self) -> str:
        return self.manifest.name

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def tokenize(self, texts: list[str], truncate: bool) -> list[Tokenized]:
        if len(texts) <= INLINE_TOKENIZE_MAX:
            return self.model.tokenize(texts, truncate)
        return await asyncio.to_thread(self.model.tokenize, texts, truncate)

    async def embed(self, texts: list[str], truncate: bool = True) -> EmbeddingResult:
        tokenized = await self.tokenize(texts, truncate)
        rows = await self.batcher.submit([t.ids for t in tokenized])  # (n, outputs, dim)
        tokens = sum(len(t.ids) for t in tokenized)
        self._tokens.inc(tokens)
        unnormalized = np.ascontiguousarray(rows[:, 1]) if rows.shape[1] > 1 else None
        return EmbeddingResult(np.ascontiguousarray(rows[:, 0]), unnormalized, tokens)


class Reranker:
    """A served cross-encoder: pair builder + session + dynamic batcher (shared with embeddings'
    design: pairs from concurrent requests share forward passes under the token budget)."""

    def __init__(self, folder: Path, manifest: Manifest, variant: VariantParity, settings: Settings) -> None:
        self.manifest = manifest
        self.variant = variant
        self.model = CrossEncoderModel(folder, manifest, variant, threads=settings.threads, streams=settings.streams)
        self.batcher = make_batcher(manifest.name, self.model.forward, (1, 1), settings)
        self._tokens = metrics.TOKENS.labels(manifest.name)

    @property
    def name(self) -> str:
        return self.manifest.name

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def relevance(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, int]:
        """(n,) relevance in (0, 1), the sigmoid of the logits as Cohere's scores, and the tokens."""
        if len(documents) <= INLINE_TOKENIZE_MAX:
            sequences = self.model.pairs(query, documents, max_tokens_per_doc, truncate)
        else:
            sequences = await asyncio.to_thread(self.model.pairs, query, documents, max_tokens_per_doc, truncate)
        rows = await self.batcher.submit(sequences)  # (n, 1, 1)
        tokens = sum(len(s) for s in sequences)
        self._tokens.inc(tokens)
        logits = rows[:, 0, 0].astype(np.float32)
        return 1.0 / (1.0 + np.exp(-logits)), tokens


@dataclass
class ModelRegistry:
    settings: Settings
    encoders: dict[str, TextEncoder] = field(default_factory=dict)
    rerankers: dict[str, Reranker | InContextReranker] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def load(self) -> None:
        models_dir = self.settings.models_dir
        wanted = {m.strip() for m in self.settings.models.split(",") if m.strip()}
        folders = sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_FILE}")) if models_dir.is_dir() else []
        for folder in folders:
            if wanted and folder.name not in wanted:
                continue
            try:
                self._load_one(folder)
            except Exception as exc:  # one broken folder must not take the others down
                log.error("model folder %s not served: %s", folder, exc)
                self.failed[folder.name] = str(exc)
        log.info("serving models: %s", ", ".join([*self.encoders, *self.rerankers]) or "none")

    def _load_one(self, folder: Path) -> None:
        manifest = Manifest.load(folder)
        if manifest.kind not in (ModelKind.TEXT, ModelKind.CROSS_ENCODER, ModelKind.BLOCKRANK):
            self.skipped[manifest.name] = f"kind {manifest.kind} is not served by this version"
            return
        problems = manifest.verify_files(folder)
        if problems:
            raise ValueError("; ".join(problems))
        if manifest.kind == ModelKind.BLOCKRANK:
            if importlib.util.find_spec("torch") is None:  # e.g. the runtime image: skip, don't fail
                self.skipped[manifest.name] = "a blockrank model needs torch: pip install 'tessera[blockrank]'"
                return
            self.rerankers[manifest.name] = InContextReranker(folder, manifest, self.settings)
            log.info("loaded %s (blockrank %s, PyTorch fp32)", manifest.name, manifest.blockrank.backbone)  # type: ignore[union-attr]
            return
        variant = choose_variant(manifest, self.settings.backend, self.settings.precision)
        if manifest.kind == ModelKind.CROSS_ENCODER:
            self.rerankers[manifest.name] = Reranker(folder, manifest, variant, self.settings)
        else:
            self.encoders[manifest.name] = TextEncoder(folder, manifest, variant, self.settings)
        log.info("loaded %s (%s, min cosine %.5f)", manifest.name, variant.key, variant.min_cosine)

    @property
    def served(self) -> list[TextEncoder | Reranker | InContextReranker]:
        return [*self.encoders.values(), *self.rerankers.values()]

    def start(self) -> None:
        for model in self.served:
            model.start()

    async def stop(self) -> None:
        for model in self.served:
            await model.stop()

    @property
    def ready(self) -> bool:
        return bool(self.encoders or self.rerankers) and not self.failed
