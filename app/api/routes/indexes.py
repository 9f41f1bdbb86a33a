"""Collections (`/indexes`), their documents, and search."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Path, Response

from app.api.deps import CollectionsDep, ServicesDep
from app.api.json_route import FastJSONRoute
from app.core.errors import DocumentNotFound
from app.core.text import MAX_ID_CHARS
from app.schemas.common import INDEX_NAME_PATTERN
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
from app.services import search as service

router = APIRouter(prefix="/indexes", tags=["search"], route_class=FastJSONRoute)

# The pattern is documented here and checked by the collection manager (422 invalid_index_name).
IndexName = Path(description="collection name", json_schema_extra={"pattern": INDEX_NAME_PATTERN})
DocId = Path(max_length=MAX_ID_CHARS)


# Search first: routes are tried in order (see app/main.py), and search is the hot one.
@router.post("/{name}/search", response_model=SearchResponse)
async def search(body: SearchRequest, services: ServicesDep, name: str = IndexName) -> Response:
    outcome = await service.search(
        services.collections, services.registry, services.settings, services.fetcher, name, body
    )
    payload = {"hits": outcome.hits, "took_ms": outcome.took_ms, "index_type": outcome.index_type}
    return Response(_search_json(payload), media_type="application/json")


@router.post("", status_code=201)
async def create_index(body: CreateIndexRequest, services: ServicesDep) -> dict[str, Any]:
    collection = await service.create_collection(services.collections, services.registry, body)
    return collection.describe()


@router.get("")
async def list_indexes(collections: CollectionsDep) -> dict[str, Any]:
    await asyncio.to_thread(collections.discover)  # collections a batch build created since start-up
    return {
        "indexes": [c.describe() for c in collections.loaded()],
        "failed": collections.describe_failed(),
    }


@router.get("/{name}")
async def get_index(collections: CollectionsDep, name: str = IndexName) -> dict[str, Any]:
    return collections.get(name).describe()


@router.delete("/{name}", status_code=204)
async def delete_index(collections: CollectionsDep, name: str = IndexName) -> Response:
    collections.check_writable()
    await asyncio.to_thread(collections.delete, name)
    return Response(status_code=204)


@router.put("/{name}/documents", response_model=UpsertResponse)
async def upsert_documents(body: UpsertRequest, services: ServicesDep, name: str = IndexName) -> UpsertResponse:
    upserted, size = await service.upsert(
        services.collections, services.registry, services.settings, services.fetcher, name, body
    )
    return UpsertResponse(upserted=upserted, size=size)


# `:path`: an id with "/" (refused on upsert since, but stored by older versions) stays addressable.
@router.get("/{name}/documents/{doc_id:path}", response_model=DocumentOut)
async def get_document(
    collections: CollectionsDep, name: str = IndexName, doc_id: str = DocId, include_vector: bool = False
) -> DocumentOut:
    doc = await asyncio.to_thread(collections.get(name).store.get, doc_id, include_vector)
    if doc is None:
        raise DocumentNotFound(f"document {doc_id!r} not found in {name!r}")
    vector = doc.vector.tolist() if doc.vector is not None else None
    return DocumentOut(
        id=doc.id,
        text=doc.text,
        metadata=doc.metadata,
        vector=vector,
        image=doc.image,
        thumbnail=service.thumbnail_uri(doc.thumbnail),
    )


@router.delete("/{name}/documents/{doc_id:path}", response_model=DeleteResponse)
async def delete_document(collections: CollectionsDep, name: str = IndexName, doc_id: str = DocId) -> DeleteResponse:
    collections.check_writable()
    deleted = await asyncio.to_thread(collections.get(name).delete, [doc_id])
    if not deleted:
        raise DocumentNotFound(f"document {doc_id!r} not found in {name!r}")
    return DeleteResponse(deleted=deleted, not_found=[])


@router.post("/{name}/documents/delete", response_model=DeleteResponse)
async def delete_documents(
    body: BulkDeleteRequest, collections: CollectionsDep, name: str = IndexName
) -> DeleteResponse:
    collections.check_writable()
    deleted = await asyncio.to_thread(collections.get(name).delete, body.ids)
    gone = set(deleted)
    return DeleteResponse(deleted=deleted, not_found=[i for i in body.ids if i not in gone])


def _search_json(payload: dict[str, Any]) -> bytes:
    """orjson straight from the hit dicts (validating them into SearchResponse first cost ~10% of a
    search); pydantic for what orjson refuses: integers past 64 bits in metadata a batch build stored."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        return SearchResponse.model_validate(payload).model_dump_json().encode()


@router.post("/{name}/optimize", status_code=202)
async def optimize(
    collections: CollectionsDep, body: OptimizeRequest | None = None, name: str = IndexName
) -> dict[str, Any]:
    """Rebuild in the background (reads keep working); poll GET /indexes/{name} for `last_build`."""
    service.start_optimize(collections, name, body.index if body else None)
    return {"status": "started", "index": name}
