"""GET /v1/models: what is served, on which backend/precision, and how close it is to the reference."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.api.deps import RegistryDep

router = APIRouter(tags=["models"])


@router.get("/v1/models")
async def list_models(registry: RegistryDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [m.describe() for m in registry.served],
        "default": registry.settings.default_model,
    }


@router.get("/v1/models/{model_id}", responses={404: {"description": "unknown model"}})
async def get_model(model_id: str, registry: RegistryDep) -> dict[str, Any]:
    return registry.get(model_id).describe()
