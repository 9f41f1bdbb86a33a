"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from app.api.deps import ServicesDep
from app.core.metrics import REGISTRY
from app.services.rescore import degraded
from app.services.search import stale

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"description": "models not loaded"}})
async def ready(services: ServicesDep) -> Any:
    """Readiness: every model folder that was asked for is loaded. Collections that could not be
    opened, whose second-stage (rescore) model is missing, or whose vectors another version of
    their model embedded, are listed (the others serve) but do not make the service unready."""
    registry, collections = services.registry, services.collections
    body = {
        "status": "ready" if registry.ready else "not_ready",
        "models": sorted(registry.models),
        "failed": registry.failed,
        "skipped": registry.skipped,
        "collections_failed": collections.failed,
        # Searchable, but writes and `rerank` are refused: their second-stage model is missing.
        "collections_degraded": degraded(registry, collections),
        # Searchable, but their vectors come from another version of their model than the served one.
        "collections_stale": stale(registry, collections),
    }
    return JSONResponse(body, status_code=200 if registry.ready else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
