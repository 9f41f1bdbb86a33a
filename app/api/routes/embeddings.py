"""POST /v1/embeddings (OpenAI-compatible) and POST /embed (native, TEI-style)."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import ServicesDep
from app.api.json_route import FastJSONRoute
from app.schemas.embeddings import EmbeddingRequest, EmbeddingResponse, EmbedRequest, ImageItem
from app.services.embedding import (
    QUANTIZED_FORMATS,
    ImageInput,
    check_quantizable,
    embed_inputs,
    quantized,
    truncate_dims,
)

router = APIRouter(tags=["embeddings"], route_class=FastJSONRoute)

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    400: {"description": "an input the model does not embed (an image for a text model, text for an image model)"},
    404: {"description": "unknown model"},
    413: {
        "description": "too many inputs or images, payload or image too large (bytes or pixels), "
        "or input over max tokens with truncate=false"
    },
    422: {"description": "invalid request, or an image that cannot be decoded or fetched"},
    429: {"description": "queue full; retry after Retry-After seconds"},
}
_NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY


def _items(inputs: list[str | ImageItem]) -> list[str | ImageInput]:
    return [ImageInput(item.image) if isinstance(item, ImageItem) else item for item in inputs]


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, services: ServicesDep) -> Response:
    check_quantizable(services.registry.embedder(body.model), body.encoding_format, body.dimensions)  # before any work
    embedder, result = await embed_inputs(
        services.registry,
        services.settings,
        services.fetcher,
        body.model,
        _items(body.input),
        body.truncate,
        body.dimensions,
    )
    vectors = truncate_dims(result.vectors, body.dimensions, renormalize=True)
    if body.encoding_format in QUANTIZED_FORMATS:
        data = [
            {"object": "embedding", "index": i, "embedding": row}
            for i, row in enumerate(quantized(embedder, vectors, body.encoding_format))  # type: ignore[arg-type]
        ]
    elif body.encoding_format == "base64":
        little_endian = np.ascontiguousarray(vectors, dtype="<f4")
        data = [
            {"object": "embedding", "index": i, "embedding": base64.b64encode(row.tobytes()).decode()}
            for i, row in enumerate(little_endian)
        ]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)]
    payload = {
        "object": "list",
        "data": data,
        "model": embedder.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }
    return Response(orjson.dumps(payload, option=_NUMPY_JSON), media_type="application/json")


@router.post("/embed", response_model=list[list[float]] | list[list[int]], responses=ERROR_RESPONSES)
async def embed(body: EmbedRequest, services: ServicesDep) -> Response:
    check_quantizable(services.registry.embedder(body.model), body.encoding_format, body.dimensions, body.normalize)
    embedder, result = await embed_inputs(
        services.registry,
        services.settings,
        services.fetcher,
        body.model,
        _items(body.inputs),
        body.truncate,
        body.dimensions,
    )
    if body.normalize or result.unnormalized is None:
        vectors = truncate_dims(result.vectors, body.dimensions, renormalize=True)
    else:
        vectors = truncate_dims(result.unnormalized, body.dimensions, renormalize=False)
    if body.encoding_format in QUANTIZED_FORMATS:
        vectors = quantized(embedder, vectors, body.encoding_format)  # type: ignore[arg-type]
    return Response(orjson.dumps(vectors, option=_NUMPY_JSON), media_type="application/json")
