"""POST /v1/rerank (also /rerank, and /v2/rerank where the Cohere v2 client posts): Cohere- and
Jina-compatible reranking with a cross-encoder or a BlockRank in-context reranker."""

from __future__ import annotations

import uuid

import numpy as np
from fastapi import APIRouter

from app.api.deps import RegistryDep, SettingsDep, resolve_reranker
from app.core.config import Settings
from app.core.errors import APIError, busy_error
from app.inference.batcher import QueueFull
from app.inference.registry import ModelRegistry
from app.inference.tokenizer import InputTooLong
from app.schemas.rerank import RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage

router = APIRouter(tags=["rerank"])


async def rerank_scores(
    registry: ModelRegistry,
    settings: Settings,
    model: str | None,
    query: str,
    documents: list[str],
    max_tokens_per_doc: int | None = None,
    truncate: bool = True,
) -> tuple[str, np.ndarray, int]:
    """(model name, relevance in [0, 1] per document, tokens); limits and errors as 4xx."""
    if len(documents) > settings.max_inputs_per_request:
        raise APIError(
            413, f"{len(documents)} documents; at most {settings.max_inputs_per_request} per request", "too_many_inputs"
        )
    reranker = resolve_reranker(registry, model)
    try:
        scores, tokens = await reranker.relevance(query, documents, max_tokens_per_doc, truncate)
    except QueueFull as exc:
        raise busy_error("rerank", settings.retry_after_s) from exc
    except InputTooLong as exc:
        raise APIError(
            413,
            f"document {exc.index} has {exc.length} tokens, more than {exc.limit}; "
            "shorten it, raise max_tokens_per_doc or send truncate=true",
            "input_too_long",
        ) from exc
    except ValueError as exc:  # e.g. more documents than a blockrank prompt holds
        raise APIError(413, str(exc), "too_many_inputs") from exc
    return reranker.name, scores, tokens


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
async def rerank(body: RerankRequest, registry: RegistryDep, settings: SettingsDep) -> RerankResponse:
    name, scores, tokens = await rerank_scores(
        registry, settings, body.model, body.query, body.documents, body.max_tokens_per_doc, body.truncate
    )
    order = np.argsort(-scores, kind="stable")[: body.top_n or len(scores)]
    results = [
        RerankResult(
            index=int(i),
            relevance_score=float(scores[i]),
            document=RerankDocument(text=body.documents[i]) if body.return_documents else None,
        )
        for i in order
    ]
    return RerankResponse(
        id=str(uuid.uuid4()),
        model=name,
        results=results,
        usage=RerankUsage(total_tokens=tokens),
        meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    )
