"""POST /v1/embeddings (OpenAI-compatible) and POST /embed (native, TEI-style)."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.responses import Response

from app.api.deps import RegistryDep, SettingsDep, resolve_text_encoder
from app.core.config import Settings
from app.core.errors import APIError, busy_error
from app.inference.batcher import QueueFull
from app.inference.registry import EmbeddingResult, ModelRegistry, TextEncoder
from app.inference.tokenizer import InputTooLong
from app.schemas.embeddings import EmbeddingRequest, EmbeddingResponse, EmbedRequest

router = APIRouter(tags=["embeddings"])

ERROR_RESPONSES: dict[int | str, dict[str, str]] = {
    404: {"description": "unknown model"},
    413: {"description": "too many inputs, payload too large, or input over max tokens with truncate=false"},
    422: {"description": "invalid request"},
    429: {"description": "queue full; retry after Retry-After seconds"},
}
_NUMPY_JSON = orjson.OPT_SERIALIZE_NUMPY


async def run_embedding(
    registry: ModelRegistry,
    settings: Settings,
    model: str | None,
    texts: list[str],
    truncate: bool,
    dimensions: int | None,
) -> tuple[TextEncoder, EmbeddingResult]:
    """Shared by both routes: limits, model lookup, batching, and errors mapped to 4xx."""
    if len(texts) > settings.max_inputs_per_request:
        raise APIError(
            413, f"{len(texts)} inputs; at most {settings.max_inputs_per_request} per request", "too_many_inputs"
        )
    encoder = resolve_text_encoder(registry, model)
    if dimensions is not None and dimensions > encoder.manifest.dim:
        raise APIError(422, f"dimensions={dimensions} exceeds the model's {encoder.manifest.dim}", "invalid_dimensions")
    try:
        result = await encoder.embed(texts, truncate=truncate)
    except InputTooLong as exc:
        raise APIError(413, str(exc), "input_too_long") from exc
    except QueueFull as exc:
        raise busy_error("embedding", settings.retry_after_s) from exc
    return encoder, result


def truncate_dims(vectors: np.ndarray, dimensions: int | None, renormalize: bool) -> np.ndarray:
    """Matryoshka-style: keep the first `dimensions` components, then (optionally) re-normalise."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]  # (n, dimensions)
    if renormalize:
        cut = cut / np.linalg.norm(cut, axis=1, keepdims=True).clip(min=1e-12)
    return cut


@router.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
async def create_embeddings(body: EmbeddingRequest, registry: RegistryDep, settings: SettingsDep) -> Response:
    encoder, result = await run_embedding(registry, settings, body.model, body.input, body.truncate, body.dimensions)
    vectors = truncate_dims(result.vectors, body.dimensions, renormalize=True)
    if body.encoding_format == "base64":
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
        "model": encoder.name,
        "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
    }
    return Response(orjson.dumps(payload, option=_NUMPY_JSON), media_type="application/json")


@router.post("/embed", response_model=list[list[float]], responses=ERROR_RESPONSES)
async def embed(body: EmbedRequest, registry: RegistryDep, settings: SettingsDep) -> Response:
    _, result = await run_embedding(registry, settings, body.model, body.inputs, body.truncate, body.dimensions)
    if body.normalize or result.unnormalized is None:
        vectors = truncate_dims(result.vectors, body.dimensions, renormalize=True)
    else:
        vectors = truncate_dims(result.unnormalized, body.dimensions, renormalize=False)
    return Response(orjson.dumps(vectors, option=_NUMPY_JSON), media_type="application/json")
