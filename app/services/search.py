"""Collections and search: create, upsert (embedding text through the batcher), search with an
optional rerank of the first-stage hits, background optimise."""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.core.config import Settings
from app.core.errors import (
    CollectionNotFound,
    DuplicateIds,
    InvalidRequest,
    InvalidVector,
    KeywordSearchUnavailable,
    ModelVersionChanged,
    WrongDimension,
)
from app.inference.hubness import HubCorrection, PenaltyCache
from app.inference.images import ImageLimits, open_image, thumbnail_jpeg
from app.inference.registry import ModelRegistry
from app.inference.served import Embedder
from app.schemas.search import CreateIndexRequest, DocumentIn, HybridOptions, SearchRequest, UpsertRequest
from app.search import fusion
from app.search.collection import Collection, Hit
from app.search.manager import CollectionManager
from app.search.store import Document
from app.search.vector_index import SearchParams
from app.services import rescore as rescoring
from app.services.embedding import (
    ImageInput,
    check_image_count,
    check_input_count,
    check_modalities,
    embed_inputs,
    embed_texts,
    read_images,
)
from app.services.image_sources import ImageFetcher
from app.services.rerank import rerank

log = logging.getLogger(__name__)
# How many dense candidates a hubness-corrected search re-ranks (at least top_k): penalties move an
# image by a few hundredths of cosine, and on the held-out galleries of benchmarks/clip_hubness.py
# re-ranking the top 50 gave the same Recall@1 as correcting the whole gallery.
HUB_CANDIDATES = 50
# Each collection's cached hub penalties, gone with the collection object (a deleted and re-created
# collection starts its keys afresh, and gets a new object and cache).
# One cache per correction kind ("text", "image"): each query kind has its own bank and penalties.
_penalty_caches: weakref.WeakKeyDictionary[Collection, dict[str, PenaltyCache]] = weakref.WeakKeyDictionary()
# Background optimise tasks, kept referenced until done (asyncio holds only weak references).
_background: set[asyncio.Task[Any]] = set()


def document_vector(document: DocumentIn, dim: int) -> np.ndarray | None:
    """The vector a document brings (a JSON array or base64 float32), checked; None if it brings none."""
    if document.vector is not None:
        return as_vector(document.vector, dim, f"vector of {document.id!r}")
    if document.vector_base64 is None:
        return None
    try:
        raw = base64.b64decode(document.vector_base64, validate=True)
    except ValueError as exc:
        raise InvalidVector(f"vector_base64 of {document.id!r} is not valid base64") from exc
    if len(raw) != dim * 4:
        raise WrongDimension(
            f"vector_base64 of {document.id!r} holds {len(raw)} bytes; the collection's {dim} float32 take {dim * 4}"
        )
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise InvalidVector(f"vector_base64 of {document.id!r} contains NaN or infinity")
    return vector


def as_vector(values: list[float], dim: int, what: str) -> np.ndarray:
    """A client-supplied vector of the collection's size, finite."""
    if len(values) != dim:
        raise WrongDimension(f"{what} has {len(values)} dimensions; the collection has {dim}")
    vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise InvalidVector(f"{what} contains NaN or infinity")
    return vector


async def create_collection(
    collections: CollectionManager, registry: ModelRegistry, body: CreateIndexRequest
) -> Collection:
    collections.check_writable()
    embedder = registry.embedder(body.model)
    rescore = (
        rescoring.rescore_config(registry, embedder, body.rescore.model, body.rescore.weight) if body.rescore else None
    )
    return await asyncio.to_thread(
        collections.create,
        body.name,
        embedder.name,
        embedder.dim,
        body.metric,
        body.index,
        body.thumbnails,
        rescore,
        embedder.manifest.fingerprint,
    )


def model_version_problem(registry: ModelRegistry, collection: Collection) -> str | None:
    """Why the collection's vectors do not match its served model (another version embedded them),
    or None (they match, its model is not served, or a fingerprint is unknown)."""
    config = collection.config
    served = registry.models.get(config.model)
    reason = None if served is None else config.model_changed(served.manifest.fingerprint)
    return None if reason is None else f"{reason}: {rescoring.REBUILD_HINT}"


def stale(registry: ModelRegistry, collections: CollectionManager) -> dict[str, str]:
    """Collections embedded by another version of their model than the one served now, with why (for
    /ready): their queries are embedded by the new version, so they match the old vectors poorly."""
    problems = {c.config.name: model_version_problem(registry, c) for c in collections.loaded()}
    return {name: problem for name, problem in problems.items() if problem is not None}


async def upsert(
    collections: CollectionManager,
    registry: ModelRegistry,
    settings: Settings,
    fetcher: ImageFetcher,
    name: str,
    body: UpsertRequest,
) -> tuple[int, int]:
    """Embed what came as text or image, then one durable write. Returns (upserted, collection size).
    An image document stores its reference (`image_ref`, or the URL it was fetched from), its caption
    as text, and a thumbnail only where the collection keeps them; never the image's bytes."""
    collections.check_writable()
    collection = collections.get(name)
    dim = collection.config.dim
    check_input_count(len(body.documents), settings, "documents")
    rescorer = rescoring.for_collection(registry, collection)  # before any work: no write lacks its vector
    embeds = any(d.vector is None and d.vector_base64 is None for d in body.documents)
    if embeds and (problem := model_version_problem(registry, collection)):
        raise ModelVersionChanged(problem + "; documents that bring their own vector are still accepted")
    if len({d.id for d in body.documents}) != len(body.documents):
        raise DuplicateIds("duplicate ids in one request")
    vectors: list[np.ndarray | None] = [document_vector(d, dim) for d in body.documents]
    thumbnails: list[bytes | None] = [None] * len(body.documents)
    image_rows = [i for i, d in enumerate(body.documents) if d.image is not None]
    if image_rows:
        images = [body.documents[i].image or "" for i in image_rows]
        result, thumbs = await _embed_images(registry, settings, fetcher, collection, images)
        for row, i in enumerate(image_rows):
            vectors[i], thumbnails[i] = result[row], thumbs[row]
    to_embed = [i for i, v in enumerate(vectors) if v is None]
    if to_embed:
        texts = [body.documents[i].text or "" for i in to_embed]
        _, text_result = await embed_texts(registry, settings, collection.config.model, texts)
        for row, i in enumerate(to_embed):
            vectors[i] = text_result.vectors[row]
    second: list[np.ndarray | None] = [None] * len(body.documents)
    if rescorer is not None:
        with_text = [i for i, d in enumerate(body.documents) if d.text]
        if with_text:
            rows = await rescoring.second_vectors(rescorer, [body.documents[i].text or "" for i in with_text])
            for row, i in enumerate(with_text):
                second[i] = rows[row]
    docs = [
        Document(d.id, d.text, d.metadata, v, _image_reference(d.image, d.image_ref), thumb, _modality(d), s2)
        for d, v, thumb, s2 in zip(body.documents, vectors, thumbnails, second, strict=True)
    ]
    upserted = await asyncio.to_thread(collection.upsert, docs)  # returns once durable
    return upserted, collection.store.count()


async def _embed_images(
    registry: ModelRegistry, settings: Settings, fetcher: ImageFetcher, collection: Collection, images: list[str]
) -> tuple[np.ndarray, list[bytes | None]]:
    """(n, dim) vectors of image items with the collection's model, and their thumbnails (None
    unless the collection keeps them)."""
    embedder = registry.embedder(collection.config.model)
    check_modalities(embedder, 0, len(images))
    check_image_count(len(images), settings)
    encoded = await read_images(images, list(range(len(images))), settings, fetcher)
    result = await embedder.embed_images(encoded)
    if not collection.config.thumbnails:
        return result.vectors, [None] * len(images)
    limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels)

    def thumbnails() -> list[bytes | None]:
        return [thumbnail_jpeg(open_image(data, limits, i)) for i, data in enumerate(encoded)]

    return result.vectors, await asyncio.to_thread(thumbnails)


def _modality(document: DocumentIn) -> str | None:
    if document.image is not None:
        return "image"
    return None if document.has_vector else "text"


def _image_reference(image: str | None, image_ref: str | None) -> str | None:
    """What is stored for an image: the caller's reference, else the URL it came from, else nothing
    (base64 bytes are embedded, never stored)."""
    if image_ref is not None:
        return image_ref
    if image is not None and image[:8].lower().startswith(("http://", "https://")):
        return image
    return None


def thumbnail_uri(thumbnail: bytes | None) -> str | None:
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail).decode() if thumbnail else None


@dataclass
class SearchOutcome:
    hits: list[dict[str, Any]]
    took_ms: float
    index_type: str


async def search(
    collections: CollectionManager,
    registry: ModelRegistry,
    settings: Settings,
    fetcher: ImageFetcher,
    name: str,
    body: SearchRequest,
) -> SearchOutcome:
    """First stage (dense, keyword or hybrid, with filters), then, when asked, rerank its candidates."""
    start = time.perf_counter()
    collection = collections.get(name)
    if body.rerank and body.query is None:
        raise InvalidRequest("rerank needs a text query")
    rescorer = _stored_rescorer(registry, collection, body)  # before the search: a 503 costs nothing
    stored = None
    if rescorer is not None:  # the second-stage query embedding needs no first stage: it runs beside it
        stored = _StoredRescore(rescorer, asyncio.ensure_future(rescoring.query_vector(rescorer, body.query or "")))
    try:
        return await _search_stages(registry, settings, fetcher, collection, body, start, stored)
    finally:
        if stored is not None and not stored.query_vectors.done():
            stored.query_vectors.cancel()  # the first stage failed: nothing will read it
        elif stored is not None and not stored.query_vectors.cancelled():
            stored.query_vectors.exception()  # read: a failure nobody awaited (no hits) is not logged as lost


@dataclass
class _StoredRescore:
    """Rerank from the collection's stored second-stage vectors."""

    rescorer: rescoring.Rescorer
    query_vectors: asyncio.Future[np.ndarray]  # (1, dim): the query by the rescore model, in flight


async def _search_stages(
    registry: ModelRegistry,
    settings: Settings,
    fetcher: ImageFetcher,
    collection: Collection,
    body: SearchRequest,
    start: float,
    stored: _StoredRescore | None,
) -> SearchOutcome:
    include = set(body.include)
    reembed = body.rerank is not None and stored is None  # the reranker reads the candidates' texts
    fetch = max(body.top_k, body.rerank.candidates) if body.rerank else body.top_k
    # keyword mode embeds the query only to give a reranker the dense scores it fuses with
    needs_vector = body.mode != "keyword" or body.rerank is not None
    query = await _query_vector(registry, settings, fetcher, collection, body) if needs_vector else None
    params = SearchParams(ef_search=body.ef_search, nprobe=body.nprobe)
    fields = include | ({"document"} if reembed else set())
    cosines: dict[int, float] = {}  # hub-corrected image hits: key -> their cosine
    if body.mode == "dense":
        assert query is not None
        hubs, kind = _hub_correction(registry, collection, body)
        if hubs is None:
            found_hits = await _dense_hits(collection, body, query, fetch, fields, params)
        else:
            # ids only for the candidates: the requested fields are read for the hits kept
            candidates = await _dense_hits(collection, body, query, max(fetch, HUB_CANDIDATES), set(), params)
            kept, cosines = await _hub_corrected(hubs, collection, candidates, fetch, kind)
            found_hits = await _fetched(collection, [(h.key, h.score) for h in kept], fields) if fields else kept
    else:
        ranked, keyword_scores = await _keyword_ranking(collection, body, query, fetch, params)
        found_hits = await asyncio.to_thread(collection.hits, ranked, fields)
    found = [_hit_fields(h) for h in found_hits]
    for hit in found:
        hit["dense_score"] = cosines.get(hit["key"])
    if body.mode != "dense":
        keys = [h.key for h in found_hits]
        dense = await asyncio.to_thread(collection.dense_scores, query, keys) if query is not None else {}
        for hit in found:
            hit["dense_score"], hit["keyword_score"] = dense.get(hit["key"]), keyword_scores.get(hit["key"])
    if body.rerank and found:
        await _rerank_hits(registry, settings, collection, body, stored, found)
        if "document" not in include:
            for hit in found:
                hit["document"] = None
        found = sorted(found, key=lambda h: -h["score"])[: body.rerank.top_n or body.top_k]
    for hit in found:
        del hit["key"]
    return SearchOutcome(found, round((time.perf_counter() - start) * 1000, 3), collection.index.spec)


async def _dense_hits(
    collection: Collection, body: SearchRequest, query: np.ndarray, fetch: int, fields: set[str], params: SearchParams
) -> list[Hit]:
    """The dense first stage: on the event loop when cheap and unfiltered (a thread hop costs more
    than the search under concurrent load), else in one thread hop for search and fetch."""
    if body.filter is None and body.modality is None:
        pairs = collection.dense_keys_now(query, fetch, params)
        if pairs is not None:
            return await _fetched(collection, pairs, fields)
    return await asyncio.to_thread(collection.search, query, fetch, body.filter, fields, params, body.modality)


async def _fetched(collection: Collection, pairs: list[tuple[int, float]], fields: set[str]) -> list[Hit]:
    """The hits of scored keys with `fields`: on the event loop unless a writer holds the store."""
    found = collection.hits_now(pairs, fields)
    return found if found is not None else await asyncio.to_thread(collection.hits, pairs, fields)


def _hub_correction(
    registry: ModelRegistry, collection: Collection, body: SearchRequest
) -> tuple[HubCorrection | None, str]:
    """The collection's model's hubness correction where it applies, and the query kind it is for
    ("text" or "image": each kind has its own bank and penalties): asked for (the default), a dense
    text or image query, a collection compared by cosine or inner product, a model that ships the
    query kind's bank. Vector queries are never corrected."""
    kind = "text" if body.query is not None else "image"
    if not body.hubness_correction or body.mode != "dense" or body.vector is not None:
        return None, kind
    if collection.config.metric == "l2":
        return None, kind
    model = registry.models.get(collection.config.model)
    if not isinstance(model, Embedder):
        return None, kind
    return (model.hubness if kind == "text" else model.image_hubness), kind


async def _hub_corrected(
    hubs: HubCorrection, collection: Collection, candidates: list[Hit], fetch: int, kind: str
) -> tuple[list[Hit], dict[int, float]]:
    """The candidates re-ranked with each image hit's score lowered by its hub penalty (text and
    vector-only documents keep theirs), cut to `fetch`; and key -> cosine of the hits corrected.
    Penalties are computed once per stored image and query `kind` (on a worker thread) and cached."""
    cache = _penalty_caches.setdefault(collection, {}).setdefault(kind, PenaltyCache())
    penalty, missing = cache.known(hubs, [h.key for h in candidates])
    if missing:
        computed = await asyncio.to_thread(_image_penalties, hubs, collection, missing)
        cache.add(hubs, computed)
        penalty.update(computed)
    cosines = {h.key: h.score for h in candidates if not math.isnan(penalty[h.key])}
    ranked = sorted(
        (replace(h, score=h.score - penalty[h.key]) if h.key in cosines else h for h in candidates),
        key=lambda h: -h.score,
    )[:fetch]
    return ranked, {h.key: cosines[h.key] for h in ranked if h.key in cosines}


def _image_penalties(hubs: HubCorrection, collection: Collection, keys: list[int]) -> dict[int, float]:
    """key -> hub penalty of each of `keys` that is a stored image, NOT_AN_IMAGE for the others
    (texts, vector-only documents, keys deleted since the search found them: keys are never reused)."""
    images = collection.store.image_vectors_for(keys)
    values = dict.fromkeys(keys, PenaltyCache.NOT_AN_IMAGE)
    image_keys = [k for k in keys if k in images]
    if image_keys:
        values.update(zip(image_keys, hubs.penalties(np.stack([images[k] for k in image_keys])).tolist(), strict=True))
    return values


def _hit_fields(hit: Hit) -> dict[str, Any]:
    """A hit as the response's fields (every SearchHit field, in its order) plus its internal key."""
    return {
        "id": hit.id,
        "score": hit.score,
        "first_stage_score": None,
        "dense_score": None,
        "keyword_score": None,
        "document": hit.document,
        "metadata": hit.metadata,
        "vector": hit.vector,
        "image": hit.image,
        "thumbnail": thumbnail_uri(hit.thumbnail),
        "key": hit.key,
    }


async def _query_vector(
    registry: ModelRegistry, settings: Settings, fetcher: ImageFetcher, collection: Collection, body: SearchRequest
) -> np.ndarray:
    """(dim,) the query as a vector: given, or embedded (text or image) by the collection's model."""
    if body.vector is not None:
        return as_vector(body.vector, collection.config.dim, "query vector")
    if body.image is not None:
        _, result = await embed_inputs(registry, settings, fetcher, collection.config.model, [ImageInput(body.image)])
        return result.vectors[0]
    _, result = await embed_texts(registry, settings, collection.config.model, [body.query or ""])
    return result.vectors[0]


async def _keyword_ranking(
    collection: Collection, body: SearchRequest, query: np.ndarray | None, fetch: int, params: SearchParams
) -> tuple[list[tuple[int, float]], dict[int, float]]:
    """Keyword mode: the BM25 ranking; hybrid: BM25 and dense fused. Returns the ranking cut to
    `fetch` and every candidate's BM25 score."""
    options = body.hybrid or HybridOptions()
    depth = fetch if body.mode == "keyword" else max(fetch, options.candidates)
    keyword = await asyncio.to_thread(collection.keyword_keys, body.query or "", depth, body.filter, body.modality)
    if not keyword and not await asyncio.to_thread(collection.store.has_text):
        raise KeywordSearchUnavailable(
            f"index '{collection.config.name}' holds no documents with text: {body.mode} search needs text to match"
        )
    keyword_scores = dict(keyword)
    if body.mode == "keyword":
        return keyword, keyword_scores
    assert query is not None
    dense = await asyncio.to_thread(collection.dense_keys, query, depth, body.filter, params, body.modality)
    if options.fusion == "rrf":
        fused = fusion.reciprocal_rank(dense, keyword, options.dense_weight, options.rrf_k)
    else:
        fused = fusion.convex(dense, keyword, options.dense_weight)
    return [(f.key, f.score) for f in fused[:fetch]], keyword_scores


async def _rerank_hits(
    registry: ModelRegistry,
    settings: Settings,
    collection: Collection,
    body: SearchRequest,
    stored: _StoredRescore | None,
    found: list[dict[str, Any]],
) -> None:
    """Rescore `found` in place: `score` becomes the reranker's, `first_stage_score` the one before.
    A reranker that fuses with the first stage fuses with the vector score (in keyword and hybrid
    modes the exact dense score, as its fusion weight was fitted on cosines)."""
    assert body.rerank is not None
    dense_mode = body.mode == "dense"
    # a hit deleted since it was found has no dense score: 0 (it is about to vanish anyway)
    first_stage = np.array([h["score"] if dense_mode else h["dense_score"] or 0.0 for h in found], dtype=np.float32)
    if stored is not None:  # stored second-stage vectors: one query embedding
        ids = [h["id"] for h in found]
        query_vector = (await stored.query_vectors)[0]
        scores = await rescoring.rescored(stored.rescorer, collection, query_vector, ids, first_stage)
    else:
        texts = [h["document"] or "" for h in found]
        outcome = await rerank(registry, settings, body.rerank.model, body.query or "", texts, first_stage=first_stage)
        scores = outcome.scores
    for hit, score in zip(found, scores, strict=True):
        hit["first_stage_score"], hit["score"] = hit["score"], float(score)


def _stored_rescorer(registry: ModelRegistry, collection: Collection, body: SearchRequest) -> rescoring.Rescorer | None:
    """The collection's stored second-stage vectors serve `rerank` when it names no model or theirs."""
    spec = collection.config.rescore
    if not body.rerank or not spec or body.rerank.model not in (None, spec["model"]):
        return None
    return rescoring.for_collection(registry, collection)


def start_optimize(collections: CollectionManager, name: str, spec: str | None) -> None:
    """Rebuild in the background (reads keep working); GET /indexes/{name} shows `last_build`, or
    `last_build_error` when it failed. A spec that cannot be built is refused here (422)."""
    collections.check_writable()
    collection = collections.get(name)
    collection.check_buildable(collection.config.index if spec is None else spec)
    collection.reserve_optimize()  # GET /indexes/{name} shows it running from the 202 on
    task = asyncio.create_task(asyncio.to_thread(collection.optimize, spec, True))
    _background.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task[Any]) -> None:
    _background.discard(task)
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(exc, CollectionNotFound):  # deleted while it built: nothing was written, nothing is wrong
        log.info("background optimise stopped: %s", exc)
    else:
        log.error("background optimise failed: %r", exc)  # recorded in the collection's last_build_error
