"""POST /v1/rerank (also /rerank, and /v2/rerank where the Cohere v2 client posts): Cohere- and
Jina-compatible reranking with a cross-encoder or a BlockRank in-context reranker."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.api.deps import ServicesDep
from app.api.json_route import FastJSONRoute
from app.schemas.rerank import RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage
from app.services.rerank import rerank as rerank_documents

router = APIRouter(tags=["rerank"], route_class=FastJSONRoute)


@router.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True)
@router.post("/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
@router.post("/rerank", response_model=RerankResponse, response_model_exclude_none=True, include_in_schema=False)
async def rerank(body: RerankRequest, services: ServicesDep) -> RerankResponse:
    outcome = await rerank_documents(
        services.registry,
        services.settings,
        body.model,
        body.query,
        body.documents,
        body.max_tokens_per_doc,
        body.truncate,
    )
    results = [
        RerankResult(
            index=int(i),
            relevance_score=float(outcome.scores[i]),
            document=RerankDocument(text=body.documents[i]) if body.return_documents else None,
        )
        for i in outcome.order(body.top_n)
    ]
    return RerankResponse(
        id=str(uuid.uuid4()),
        model=outcome.model,
        results=results,
        usage=RerankUsage(total_tokens=outcome.tokens),
        meta={"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
    )
