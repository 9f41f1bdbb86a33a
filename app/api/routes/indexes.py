"""Collections (`/indexes`), their documents, and search."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Response

from app.api.deps import CollectionsDep, RegistryDep, SettingsDep, resolve_text_encoder
from app.api.routes.embeddings import run_embedding
from app.api.routes.rerank import rerank_scores
from app.core.errors import APIError
from app.schemas.search import (
    BulkDeleteRequest,
    CreateIndexRequest,
    DeleteResponse,
    DocumentOut,
    OptimizeRequest,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from app.search.filters import FilterError
from app.search.store import Document
from app.search.vector_index import IndexSpecError, SearchParams, validate_spec

router = APIRouter(prefix="/indexes", tags=["search"])
log = logging.getLogger(__name__)

IndexName = Path(description="collection name", max_length=200)
_background: set[asyncio.Task[Any]] = set()


def _vector(values: list[float], dim: int, what: str) -> np.ndarray:
    if len(values) != dim:
        raise APIError(422, f"{what} has {len(values)} dimensions; the collection has {dim}", "wrong_dimension")
    vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise APIError(422, f"{what} contains NaN or infinity", "invalid_vector")
    return vector


@router.post("", status_code=201)
async def create_index(body: CreateIndexRequest, collections: CollectionsDep, registry: RegistryDep) -> dict[str, Any]:
    collections.check_writable()
    encoder = resolve_text_encoder(registry, body.model)
    collection = await asyncio.to_thread(
        collections.create, body.name, encoder.name, encoder.manifest.dim, body.metric, body.index
    )
    return collection.describe()


@router.get("")
async def list_indexes(collections: CollectionsDep) -> dict[str, Any]:
    return {"indexes": [c.describe() for c in collections.collections.values()]}


@router.get("/{name}")
async def get_index(collections: CollectionsDep, name: str = IndexName) -> dict[str, Any]:
    return collections.get(name).describe()


@router.delete("/{name}", status_code=204)
async def delete_index(collections: CollectionsDep, name: str = IndexName) -> Response:
    collections.check_writable()
    await asyncio.to_thread(collections.delete, name)
    return Response(status_code=204)


@router.put("/{name}/documents", response_model=UpsertResponse)
async def upsert_documents(
    body: UpsertRequest,
    collections: CollectionsDep,
    registry: RegistryDep,
    settings: SettingsDep,
    name: str = IndexName,
) -> UpsertResponse:
    collections.check_writable()
    collection = collections.get(name)
    dim = collection.config.dim
    if len(body.documents) > settings.max_inputs_per_request:
        raise APIError(413, f"at most {settings.max_inputs_per_request} documents per request", "too_many_inputs")
    if len({d.id for d in body.documents}) != len(body.documents):
        raise APIError(422, "duplicate ids in one request", "duplicate_ids")
    vectors: list[np.ndarray | None] = [
        _vector(d.vector, dim, f"vector of {d.id!r}") if d.vector is not None else None for d in body.documents
    ]
    to_embed = [i for i, v in enumerate(vectors) if v is None]
    if to_embed:
        texts = [body.documents[i].text or "" for i in to_embed]
        _, result = await run_embedding(registry, settings, collection.config.model, texts, True, None)
        for row, i in enumerate(to_embed):
            vectors[i] = result.vectors[row]
    docs = [Document(d.id, d.text, d.metadata, v) for d, v in zip(body.documents, vectors, strict=True)]
    upserted = await asyncio.to_thread(collection.upsert, docs)  # returns once durable
    return UpsertResponse(upserted=upserted, size=collection.store.count())


@router.get("/{name}/documents/{doc_id}", response_model=DocumentOut)
async def get_document(
    collections: CollectionsDep, name: str = IndexName, doc_id: str = Path(max_length=512), include_vector: bool = False
) -> DocumentOut:
    doc = await asyncio.to_thread(collections.get(name).store.get, doc_id, include_vector)
    if doc is None:
        raise APIError(404, f"document {doc_id!r} not found in {name!r}", "document_not_found")
    vector = doc.vector.tolist() if doc.vector is not None else None
    return DocumentOut(id=doc.id, text=doc.text, metadata=doc.metadata, vector=vector)


@router.delete("/{name}/documents/{doc_id}", response_model=DeleteResponse)
async def delete_document(
    collections: CollectionsDep, name: str = IndexName, doc_id: str = Path(max_length=512)
) -> DeleteResponse:
    collections.check_writable()
    deleted = await asyncio.to_thread(collections.get(name).delete, [doc_id])
    if not deleted:
        raise APIError(404, f"document {doc_id!r} not found in {name!r}", "document_not_found")
    return DeleteResponse(deleted=deleted, not_found=[])


@router.post("/{name}/documents/delete", response_model=DeleteResponse)
async def delete_documents(
    body: BulkDeleteRequest, collections: CollectionsDep, name: str = IndexName
) -> DeleteResponse:
    collections.check_writable()
    deleted = await asyncio.to_thread(collections.get(name).delete, body.ids)
    gone = set(deleted)
    return DeleteResponse(deleted=deleted, not_found=[i for i in body.ids if i not in gone])


@router.post("/{name}/search", response_model=SearchResponse)
async def search(
    body: SearchRequest,
    collections: CollectionsDep,
    registry: RegistryDep,
    settings: SettingsDep,
    name: str = IndexName,
) -> SearchResponse:
    start = time.perf_counter()
    collection = collections.get(name)
    if body.vector is not None:
        query = _vector(body.vector, collection.config.dim, "query vector")
    else:
        _, result = await run_embedding(registry, settings, collection.config.model, [body.query or ""], True, None)
        query = result.vectors[0]
    params = SearchParams(ef_search=body.ef_search, nprobe=body.nprobe)
    include = set(body.include)
    fetch = max(body.top_k, body.rerank.candidates) if body.rerank else body.top_k
    try:
        hits = await asyncio.to_thread(
            collection.search, query, fetch, body.filter, include | ({"document"} if body.rerank else set()), params
        )
    except FilterError as exc:
        raise APIError(422, f"bad filter: {exc}", "invalid_filter") from exc
    found = [asdict(h) for h in hits]
    if body.rerank and found:
        if body.query is None:
            raise APIError(422, "rerank needs a text query", "invalid_request")
        _, scores, _ = await rerank_scores(
            registry, settings, body.rerank.model, body.query, [h["document"] or "" for h in found]
        )
        for hit, score in zip(found, scores, strict=True):
            hit["first_stage_score"], hit["score"] = hit["score"], float(score)
            if "document" not in include:
                hit["document"] = None
        found = sorted(found, key=lambda h: -h["score"])[: body.rerank.top_n or body.top_k]
    return SearchResponse(
        hits=found,  # type: ignore[arg-type]
        took_ms=round((time.perf_counter() - start) * 1000, 3),
        index_type=collection.index.spec,
    )


@router.post("/{name}/optimize", status_code=202)
async def optimize(
    collections: CollectionsDep, body: OptimizeRequest | None = None, name: str = IndexName
) -> dict[str, Any]:
    """Rebuild in the background (reads keep working); poll GET /indexes/{name} for `last_build`."""
    collections.check_writable()
    collection = collections.get(name)
    spec = body.index if body else None
    if spec is not None:
        try:
            validate_spec(spec)
        except IndexSpecError as exc:
            raise APIError(422, str(exc), "invalid_index_spec") from exc
    if collection.describe()["optimizing"]:
        raise APIError(409, "an optimise is already running", "optimize_running")
    task = asyncio.create_task(asyncio.to_thread(collection.optimize, spec))
    _background.add(task)
    task.add_done_callback(_background.discard)
    return {"status": "started", "index": name}
