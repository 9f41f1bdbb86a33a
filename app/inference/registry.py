"""Loads every model folder under `models_dir` through the loader of its kind (`LOADERS`); each
served model owns its batcher."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.backends.openvino_backend import configure_cpu
from app.core import metrics
from app.core.config import Settings
from app.core.errors import ModelNotFound, UnsupportedInput, WrongModelKind
from app.core.manifest import MANIFEST_FILE, BiEncoderSpec, Manifest, ModelKind, VariantParity
from app.inference.batcher import DynamicBatcher
from app.inference.cross_encoder import CrossEncoderModel
from app.inference.hubness import HubCorrection
from app.inference.image_model import ImageModel
from app.inference.images import ImageDecoder, ImageLimits
from app.inference.served import Capability, Embedder, EmbeddingResult, Scorer, ServedModel
from app.inference.text_model import TextModel
from app.inference.tokenizer import Tokenized
from app.inference.variants import choose_query_variant, choose_variant

log = logging.getLogger(__name__)

# Requests with more texts, or more characters, than this tokenise on a worker thread instead of the
# event loop (a long input would stall every other request for the time it takes).
INLINE_TOKENIZE_MAX = 16
INLINE_TOKENIZE_MAX_CHARS = 4096


def make_batcher(
    name: str,
    forward: Callable[[list[np.ndarray]], np.ndarray],
    row_shape: tuple[int, int],
    settings: Settings,
    cost_budget: int | None = None,
    max_queue: int | None = None,
) -> DynamicBatcher:
    """One batcher per served model, sized by the settings (token budget, queue, streams)."""
    return DynamicBatcher(
        name,
        forward,
        row_shape,
        cost_budget=cost_budget or settings.batch_token_budget,
        max_batch_size=settings.max_batch_size,
        max_queue=max_queue or settings.max_queue,
        workers=settings.streams,
    )


def warm_up(forward: Callable[[list[np.ndarray]], np.ndarray], sequence: np.ndarray) -> None:
    """One forward pass on the loading thread before any request. OpenVINO's Python binding
    initialises its numpy bridge once per process (pybind11 `gil_safe_call_once_and_store`); when
    the first two passes of a server's first burst reach it at once from two stream threads, both
    threads deadlock there and the server hangs for good (seen under load). Done here, it never races."""
    forward([sequence])


def _inline(texts: list[str]) -> bool:
    return len(texts) <= INLINE_TOKENIZE_MAX and sum(map(len, texts)) <= INLINE_TOKENIZE_MAX_CHARS


class _Batched:
    """The lifecycle of a served ONNX model whose work goes through its own batcher."""

    batcher: DynamicBatcher

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()


class TextEncoder(_Batched, Embedder):
    """A served text model (kind `text`): tokenizer + session + dynamic batcher."""

    capabilities = frozenset({Capability.EMBED_TEXT})

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        settings: Settings,
        batcher_name: str | None = None,
        query_variant: bool | None = None,
    ) -> None:
        """`query_variant`: open the lowest-latency variant for single inputs (default: per the
        `query_variant` setting for an embedding model)."""
        variant = choose_variant(manifest, settings.backend, settings.precision)
        super().__init__(folder, manifest, variant)
        if query_variant is None:
            query_variant = settings.query_variant == "all"
        self.model = TextModel(
            folder,
            manifest,
            variant,
            threads=settings.threads,
            streams=settings.streams,
            pad_to_multiple=settings.pad_to_multiple,
            query_variant=choose_query_variant(manifest, settings.backend, settings.precision)
            if query_variant
            else None,
        )
        self.batcher = make_batcher(
            batcher_name or manifest.name, self.model.forward, (len(self.model.outputs), self.dim), settings
        )
        self._tokens = metrics.TOKENS.labels(manifest.name)
        sequence = self.model.tokenize(["warm up"])[0].ids
        warm_up(self.model.forward, sequence)  # a query session, when there is one, takes this pass
        if self.model.query_session is not None:
            self.model.forward([sequence, sequence])  # and the batch session this one

    @property
    def query_variant(self) -> VariantParity | None:
        return self.model.query_variant

    async def tokenize(self, texts: list[str], truncate: bool) -> list[Tokenized]:
        if _inline(texts):
            return self.model.tokenize(texts, truncate)
        return await asyncio.to_thread(self.model.tokenize, texts, truncate)

    async def embed_text(self, texts: list[str], truncate: bool = True) -> EmbeddingResult:
        return await self.embed_tokenized(await self.tokenize(texts, truncate))

    async def embed_tokenized(self, tokenized: list[Tokenized]) -> EmbeddingResult:
        """`embed_text` of texts this model's `tokenize` already tokenized."""
        ids = [t.ids for t in tokenized]
        rows = await self.batcher.submit(ids, [len(i) for i in ids])  # (n, outputs, dim); cost = tokens
        tokens = sum(len(i) for i in ids)
        self._tokens.inc(tokens)
        unnormalized = np.ascontiguousarray(rows[:, 1]) if rows.shape[1] > 1 else None
        return EmbeddingResult(np.ascontiguousarray(rows[:, 0]), unnormalized, tokens)


class ImageEncoderModel(_Batched, Embedder):
    """A served image model (kind `image`): a bounded decode pool (decoding and preprocessing off the
    event loop, in parallel with inference) + session + a batcher whose costs are pixels."""

    capabilities = frozenset({Capability.EMBED_IMAGE})

    def __init__(self, folder: Path, manifest: Manifest, settings: Settings, batcher_name: str | None = None) -> None:
        variant = choose_variant(manifest, settings.backend, settings.precision, tower="image")
        super().__init__(folder, manifest, variant)
        self.model = ImageModel(folder, manifest, variant, threads=settings.threads, streams=settings.streams)
        self.decoder = ImageDecoder(
            self.model.pixels,
            ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
            settings.image_decode_workers,
            settings.image_decode_queue,
            manifest.name,
        )
        self.batcher = make_batcher(
            batcher_name or manifest.name,
            self.model.forward,
            (len(self.model.outputs), self.dim),
            settings,
            cost_budget=settings.image_batch_pixels,
            # A decoded image waiting here holds ~600 KB (3 x 224 x 224 float32): the text queue's
            # 8,192 items would be ~5 GB, so images queue no deeper than the decode pool admits.
            max_queue=settings.image_decode_queue,
        )
        self._images = metrics.IMAGES.labels(manifest.name)
        warm_up(self.model.forward, np.zeros((3, self.model.tower.input_size, self.model.tower.input_size), np.float32))

    async def embed_text(self, texts: list[str], truncate: bool = True) -> EmbeddingResult:
        raise UnsupportedInput(f"model '{self.name}' embeds images only; send image items or use a text model")

    async def embed_images(self, images: list[bytes], positions: list[int] | None = None) -> EmbeddingResult:
        pixels = await self.decoder.decode(images, positions)
        rows = await self.batcher.submit(pixels, [self.model.pixels_per_image] * len(pixels))  # (n, outputs, dim)
        self._images.inc(len(images))
        unnormalized = np.ascontiguousarray(rows[:, 1]) if rows.shape[1] > 1 else None
        return EmbeddingResult(np.ascontiguousarray(rows[:, 0]), unnormalized, 0)

    async def stop(self) -> None:
        await super().stop()
        self.decoder.close()


class ClipEncoder(Embedder):
    """A served image-text model (kind `clip`): a text tower and an image tower into one space, each
    run as its own kind runs (own variant, own batcher: token costs and pixel costs never share a
    budget), so one request may mix text and image items."""

    capabilities = frozenset({Capability.EMBED_TEXT, Capability.EMBED_IMAGE})

    def __init__(self, folder: Path, manifest: Manifest, settings: Settings) -> None:
        self.text = TextEncoder(folder, manifest, settings, batcher_name=f"{manifest.name}/text")
        self.image = ImageEncoderModel(folder, manifest, settings, batcher_name=f"{manifest.name}/image")
        super().__init__(folder, manifest, self.text.variant)
        if manifest.clip is not None and manifest.clip.hubness is not None:
            self.hubness = HubCorrection.load(folder, manifest.clip.hubness, manifest.embedding_dim)
        if manifest.clip is not None and manifest.clip.image_hubness is not None:
            self.image_hubness = HubCorrection.load(folder, manifest.clip.image_hubness, manifest.embedding_dim)

    def start(self) -> None:
        self.text.start()
        self.image.start()

    async def stop(self) -> None:
        await self.text.stop()
        await self.image.stop()

    async def embed_text(self, texts: list[str], truncate: bool = True) -> EmbeddingResult:
        return await self.text.embed_text(texts, truncate)

    async def embed_images(self, images: list[bytes], positions: list[int] | None = None) -> EmbeddingResult:
        return await self.image.embed_images(images, positions)

    def _towers(self) -> dict[str, Any]:
        towers = super()._towers()
        for tower, served in (("text", self.text), ("image", self.image)):
            towers[tower].update(backend=served.backend, precision=served.precision)
        hub, image_hub = self.hubness, self.image_hubness
        towers["image"]["hubness_correction"] = (
            {"bank_texts": len(hub.bank), "neighbours": hub.neighbours, "weight": hub.weight} if hub else None
        )
        towers["image"]["image_hubness_correction"] = (
            {"bank_images": len(image_hub.bank), "neighbours": image_hub.neighbours, "weight": image_hub.weight}
            if image_hub
            else None
        )
        return towers


class CrossEncoderScorer(_Batched, Scorer):
    """A served cross-encoder (kind `cross-encoder`): pair builder + session + dynamic batcher
    (pairs from concurrent requests share forward passes under the token budget, as embeddings do)."""

    capabilities = frozenset({Capability.SCORE})

    def __init__(self, folder: Path, manifest: Manifest, settings: Settings) -> None:
        variant = choose_variant(manifest, settings.backend, settings.precision)
        super().__init__(folder, manifest, variant)
        self.model = CrossEncoderModel(folder, manifest, variant, threads=settings.threads, streams=settings.streams)
        self.batcher = make_batcher(manifest.name, self.model.forward, (1, 1), settings)
        self._tokens = metrics.TOKENS.labels(manifest.name)
        warm_up(self.model.forward, self.model.pairs("warm up", ["warm up"])[0])

    async def score(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, int]:
        """(n,) relevance in (0, 1), the sigmoid of the logits as Cohere's scores, and the tokens."""
        if _inline([query, *documents]):
            sequences = self.model.pairs(query, documents, max_tokens_per_doc, truncate)
        else:
            sequences = await asyncio.to_thread(self.model.pairs, query, documents, max_tokens_per_doc, truncate)
        rows = await self.batcher.submit(sequences, [len(s) for s in sequences])  # (n, 1, 1)
        tokens = sum(len(s) for s in sequences)
        self._tokens.inc(tokens)
        logits = rows[:, 0, 0].astype(np.float32)
        return 1.0 / (1.0 + np.exp(-logits)), tokens


class BiEncoderScorer(Scorer):
    """A `bi-encoder` reranker: a (stronger) embedding model scores each document by the cosine of
    its vectors of query and document, query and documents embedded together through its batcher.
    With the first stage's scores (search), the manifest's weights fuse the two."""

    capabilities = frozenset({Capability.SCORE})

    def __init__(self, folder: Path, manifest: Manifest, settings: Settings) -> None:
        # its query embedding is on search's latency path: its own stream count (Settings)
        latency_first = settings.model_copy(update={"streams": settings.bi_encoder_streams})
        self.encoder = TextEncoder(folder, manifest, latency_first, query_variant=settings.query_variant != "off")
        super().__init__(folder, manifest, self.encoder.variant)
        self.weights = manifest.bi_encoder or BiEncoderSpec()
        # Search's rescore query (one input against stored vectors): the distilled tower when there is one.
        self.query_encoder: TextEncoder | None = None
        if self.weights.query_tower and settings.rescore_query_tower:
            self.query_encoder = _open_query_tower(folder, manifest, self.weights.query_tower, latency_first)

    def start(self) -> None:
        self.encoder.start()
        if self.query_encoder is not None:
            self.query_encoder.start()

    async def stop(self) -> None:
        await self.encoder.stop()
        if self.query_encoder is not None:
            await self.query_encoder.stop()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.query_encoder is not None:
            q = self.query_encoder
            out["towers"]["query"] = {
                "max_tokens": q.manifest.text_tower.max_tokens,
                "layers_from": q.manifest.source.checkpoint,
                "backend": q.backend,
                "precision": q.precision,
                "alignment": self.weights.query_alignment,
                "max_query_tokens": self.weights.query_tower_max_tokens,
            }
        return out

    async def score(
        self, query: str, documents: list[str], max_tokens_per_doc: int | None = None, truncate: bool = True
    ) -> tuple[np.ndarray, int]:
        """(n,) cosines in [-1, 1]. `max_tokens_per_doc` does not apply: each text is embedded on
        its own, up to the model's max_tokens."""
        result = await self.encoder.embed_text([query, *documents], truncate)
        vectors = result.vectors  # (1 + n, dim), unit rows
        return (vectors[1:] @ vectors[0]).astype(np.float32), result.tokens

    @property
    def query_variant(self) -> VariantParity | None:
        return self.encoder.query_variant

    def fuse(self, first_stage: np.ndarray, scores: np.ndarray) -> np.ndarray:
        return self.weights.model_weight * scores + self.weights.first_stage_weight * first_stage


def _open_query_tower(folder: Path, manifest: Manifest, sub: str, settings: Settings) -> TextEncoder:
    """The bi-encoder's query tower in `folder/sub`: a text model of the same size and similarity,
    its files intact (it has its own manifest); ValueError names what is wrong."""
    where = f"query tower {sub!r} of {manifest.name!r}"
    if not (folder / sub / MANIFEST_FILE).is_file():
        raise ValueError(f"{where}: {sub}/{MANIFEST_FILE} is missing")
    try:
        tower = Manifest.load(folder / sub)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{where}: its manifest: {first['msg']} at {'.'.join(map(str, first['loc']))}") from exc
    if tower.kind != ModelKind.TEXT or tower.dim != manifest.dim or tower.similarity != manifest.similarity:
        raise ValueError(
            f"{where}: needs a text model of {manifest.dim} dimensions ({manifest.similarity.value}), "
            f"found a {tower.kind.value} model of {tower.dim}"
        )
    if tower.text_tower.normalize != manifest.text_tower.normalize:
        raise ValueError(f"{where}: normalises its output differently from the reranker's own graph")
    problems = tower.verify_files(folder / sub)
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}")
    return TextEncoder(
        folder / sub,
        tower,
        settings,
        batcher_name=f"{manifest.name}-query",
        query_variant=settings.query_variant != "off",
    )


def _load_blockrank(folder: Path, manifest: Manifest, settings: Settings) -> ServedModel:
    if importlib.util.find_spec("torch") is None:  # e.g. the runtime image: skip, don't fail
        raise ModelSkipped("a blockrank model needs torch: pip install 'tessera[blockrank]'")
    from app.inference.in_context import InContextReranker  # imports torch

    return InContextReranker(folder, manifest, settings)


class ModelSkipped(Exception):
    """A folder this installation cannot serve (not an error of the folder): the reason is reported."""


Loader = Callable[[Path, Manifest, Settings], ServedModel]
# How each kind is served: a new kind adds a row here (and its ServedModel class), not a branch.
LOADERS: dict[ModelKind, Loader] = {
    ModelKind.TEXT: TextEncoder,
    ModelKind.IMAGE: ImageEncoderModel,
    ModelKind.CLIP: ClipEncoder,
    ModelKind.CROSS_ENCODER: CrossEncoderScorer,
    ModelKind.BLOCKRANK: _load_blockrank,
    ModelKind.BI_ENCODER: BiEncoderScorer,
}


@dataclass
class ModelRegistry:
    settings: Settings
    models: dict[str, ServedModel] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def load(self) -> None:
        configure_cpu(self.settings.ov_runtime_cache_capacity)
        models_dir = self.settings.models_dir
        wanted = {m.strip() for m in self.settings.models.split(",") if m.strip()}
        folders = sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_FILE}")) if models_dir.is_dir() else []
        for folder in folders:
            if wanted and folder.name not in wanted:
                continue
            try:
                self._load_one(folder)
            except ModelSkipped as exc:
                self.skipped[folder.name] = str(exc)
            except Exception as exc:  # one broken folder must not take the others down
                log.error("model folder %s not served: %s", folder, exc)
                self.failed[folder.name] = str(exc)
        for name in sorted(wanted - {folder.name for folder in folders}):  # a typo in the setting, or not built
            self.failed[name] = f"TESSERA_MODELS names it, but {models_dir / name} holds no {MANIFEST_FILE}"
            log.error("model %s not served: %s", name, self.failed[name])
        log.info("serving models: %s", ", ".join(self.models) or "none")

    def _load_one(self, folder: Path) -> None:
        manifest = Manifest.load(folder)
        loader = LOADERS.get(manifest.kind)
        if loader is None:
            raise ModelSkipped(f"kind {manifest.kind.value} is not served by this version")
        problems = manifest.verify_files(folder)
        if problems:
            raise ValueError("; ".join(problems))
        model = loader(folder, manifest, self.settings)
        self.models[manifest.name] = model
        log.info("loaded %s (%s, %s-%s)", manifest.name, manifest.kind.value, model.backend, model.precision)

    @property
    def embedders(self) -> dict[str, Embedder]:
        return {name: m for name, m in self.models.items() if isinstance(m, Embedder)}

    @property
    def scorers(self) -> dict[str, Scorer]:
        return {name: m for name, m in self.models.items() if isinstance(m, Scorer)}

    @property
    def served(self) -> list[ServedModel]:
        return list(self.models.values())

    def get(self, name: str) -> ServedModel:
        """Any served model by name; ModelNotFound names the reason when the folder was not served."""
        model = self.models.get(name)
        if model is not None:
            return model
        reason = self.skipped.get(name) or self.failed.get(name)
        if reason is not None:
            raise ModelNotFound(f"model '{name}' is not served: {reason}")
        raise ModelNotFound(f"model '{name}' not found; served models: {', '.join(sorted(self.models)) or 'none'}")

    def embedder(self, name: str | None) -> Embedder:
        """The embedding model `name` (the default model when None)."""
        model = self.get(name or self.settings.default_model)
        if not isinstance(model, Embedder):
            raise WrongModelKind(f"model '{model.name}' is a {model.kind.value} reranker: use /v1/rerank")
        return model

    def scorer(self, name: str | None) -> Scorer:
        """The reranker `name` (the configured default, else the first served by name, when None)."""
        name = name or self.settings.default_reranker or None
        if name is None:
            scorers = self.scorers
            if not scorers:
                raise ModelNotFound(
                    "no reranker is served (add a models/ folder of kind bi-encoder, cross-encoder or blockrank)"
                )
            return scorers[sorted(scorers)[0]]
        model = self.get(name)
        if not isinstance(model, Scorer):
            raise WrongModelKind(f"model '{name}' is an embedding model, not a reranker")
        return model

    def start(self) -> None:
        for model in self.served:
            model.start()

    async def stop(self) -> None:
        for model in self.served:
            await model.stop()
        # Drop the sessions now: an app object can outlive its shutdown in a reference cycle (tests
        # create hundreds), and each holds every model's weights (~1.5 GB with the defaults).
        self.models.clear()

    @property
    def ready(self) -> bool:
        return bool(self.models) and not self.failed
