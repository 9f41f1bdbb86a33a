"""Second-stage vectors: a collection may keep, beside each document's first-stage vector, the
vector of a stronger model (a bi-encoder reranker or a text embedding model), so that search's
`rerank` rescores its candidates with one query embedding instead of embedding every candidate.

Fused score = model weight x cosine(second-stage query, stored document vector) + weight x first-stage
score, as a bi-encoder reranker fuses when it re-embeds the candidates (`BiEncoderScorer.fuse`); the
collection's `weight` stands in for the reranker's first-stage weight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import InvalidRequest, ModelNotFound, RescoreUnavailable, WrongModelKind
from app.core.manifest import ModelKind
from app.inference.registry import BiEncoderScorer, ModelRegistry, TextEncoder
from app.inference.served import Capability, Embedder
from app.search.collection import Collection
from app.search.manager import CollectionManager


@dataclass
class Rescorer:
    name: str
    encoder: Embedder  # embeds the query and the documents' texts
    default_weight: float  # the first stage's weight unless the collection sets one
    model_weight: float = 1.0  # the cosine's weight (a bi-encoder's manifest; 1 for a text model)
    fingerprint: str | None = None  # the served version's Manifest.fingerprint
    query_encoder: TextEncoder | None = None  # a bi-encoder's distilled query tower (else `encoder` embeds queries)
    query_max_tokens: int | None = None  # the longest query the tower embeds (None: any)


# What to do about vectors a previous model version embedded (the server's messages).
REBUILD_HINT = "rebuild it (tessera index build --replace-stale)"


def resolve(registry: ModelRegistry, name: str) -> Rescorer:
    """The rescore model `name`: a bi-encoder reranker, or a text embedding model."""
    model = registry.get(name)
    if isinstance(model, BiEncoderScorer):
        weights = model.weights
        return Rescorer(
            name,
            model.encoder,
            weights.first_stage_weight,
            weights.model_weight,
            model.manifest.fingerprint,
            model.query_encoder,
            weights.query_tower_max_tokens,
        )
    if isinstance(model, Embedder) and model.kind == ModelKind.TEXT:
        return Rescorer(name, model, 0.0, fingerprint=model.manifest.fingerprint)
    raise WrongModelKind(
        f"model '{name}' is a {model.kind.value} model; rescore needs a bi-encoder reranker or a text model"
    )


def rescore_config(registry: ModelRegistry, first: Embedder, model: str, weight: float | None) -> dict[str, Any]:
    """What a new collection records for `rescore: {model, weight}`; errors for what cannot work."""
    if first.capabilities != frozenset({Capability.EMBED_TEXT}):
        raise InvalidRequest(f"rescore applies to text collections; model '{first.name}' embeds images")
    rescorer = resolve(registry, model)
    chosen = rescorer.default_weight if weight is None else weight
    return {"model": model, "dim": rescorer.encoder.dim, "weight": chosen, "fingerprint": rescorer.fingerprint}


def for_collection(registry: ModelRegistry, collection: Collection) -> Rescorer | None:
    """The collection's rescorer (None when it keeps no second-stage vectors); RescoreUnavailable
    when its model is not served, no longer has the stored vectors' size, or is another version
    than the one that embedded them."""
    spec = collection.config.rescore
    if not spec:
        return None
    try:
        rescorer = resolve(registry, spec["model"])
    except (ModelNotFound, WrongModelKind) as exc:
        raise RescoreUnavailable(
            f"index '{collection.config.name}' keeps second-stage vectors of model '{spec['model']}', which is not "
            f"served as a reranker or text model ({exc.message}); plain search works, writes and rerank do not"
        ) from exc
    if rescorer.encoder.dim != spec["dim"]:
        raise RescoreUnavailable(
            f"index '{collection.config.name}': model '{spec['model']}' now has {rescorer.encoder.dim} dimensions, "
            f"its stored second-stage vectors {spec['dim']}"
        )
    changed = collection.config.rescore_changed(rescorer.fingerprint)
    if changed is not None:
        raise RescoreUnavailable(f"{changed}; plain search works, writes and rerank do not: {REBUILD_HINT}")
    return rescorer


def degraded(registry: ModelRegistry, collections: CollectionManager) -> dict[str, str]:
    """Collections whose rescore model is unavailable, with why (for /ready)."""
    out = {}
    for collection in collections.loaded():
        try:
            for_collection(registry, collection)
        except RescoreUnavailable as exc:
            out[collection.config.name] = exc.message
    return out


async def second_vectors(rescorer: Rescorer, texts: list[str]) -> np.ndarray:
    """(n, dim) unit vectors of `texts` by the rescore model (through its batcher)."""
    return (await rescorer.encoder.embed_text(texts)).vectors


async def query_vector(rescorer: Rescorer, query: str) -> np.ndarray:
    """(1, dim): the search query in the stored vectors' space, by the query tower where there is one
    and the query is no longer than the texts it was distilled for, else by the model itself."""
    tower = rescorer.query_encoder
    if tower is not None:
        tokenized = await tower.tokenize([query], truncate=True)
        if rescorer.query_max_tokens is None or len(tokenized[0].ids) <= rescorer.query_max_tokens:
            return (await tower.embed_tokenized(tokenized)).vectors
    return (await rescorer.encoder.embed_text([query])).vectors


async def rescored(
    rescorer: Rescorer, collection: Collection, query_vector: np.ndarray, ids: list[str], first_stage: np.ndarray
) -> np.ndarray:
    """(n,) fused scores of the hits `ids` for the query's (dim,) second-stage vector; a hit without
    a stored vector (it brought its own vector and no text) keeps its first-stage score in place of
    the cosine."""
    weight = float(collection.config.rescore["weight"])  # type: ignore[index]
    stored = await asyncio.to_thread(collection.store.rescore_vectors, ids)
    cosines = np.array(
        [float(stored[i] @ query_vector) if i in stored else float(first_stage[row]) for row, i in enumerate(ids)],
        dtype=np.float32,
    )
    return rescorer.model_weight * cosines + weight * first_stage
