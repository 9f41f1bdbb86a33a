"""Request dependencies: settings, the model registry, model lookup."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.errors import APIError
from app.inference.in_context import InContextReranker
from app.inference.registry import ModelRegistry, Reranker, TextEncoder
from app.search.manager import CollectionManager


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool,
# a thread hand-off per request that cost ~10% of the event loop under many small requests.
async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_collections(request: Request) -> CollectionManager:
    return request.app.state.collections


CollectionsDep = Annotated[CollectionManager, Depends(get_collections)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def resolve_text_encoder(registry: ModelRegistry, name: str | None) -> TextEncoder:
    model = name or registry.settings.default_model
    encoder = registry.encoders.get(model)
    if encoder is None and model in registry.rerankers:
        kind = registry.rerankers[model].manifest.kind.value
        raise APIError(400, f"model '{model}' is a {kind} reranker: use /v1/rerank", "wrong_model_kind")
    if encoder is None:
        served = ", ".join(sorted(registry.encoders)) or "none"
        raise APIError(404, f"model '{model}' not found; served models: {served}", "model_not_found")
    return encoder


def resolve_reranker(registry: ModelRegistry, name: str | None) -> Reranker | InContextReranker:
    if name is None:
        if not registry.rerankers:
            raise APIError(
                404,
                "no reranker is served (add a models/ folder of kind cross-encoder or blockrank)",
                "model_not_found",
            )
        return registry.rerankers[sorted(registry.rerankers)[0]]
    reranker = registry.rerankers.get(name)
    if reranker is None and name in registry.encoders:
        raise APIError(400, f"model '{name}' is an embedding model, not a reranker", "wrong_model_kind")
    if reranker is None and name in registry.skipped:
        raise APIError(404, f"reranker '{name}' is not served: {registry.skipped[name]}", "model_not_found")
    if reranker is None:
        served = ", ".join(sorted(registry.rerankers)) or "none"
        raise APIError(404, f"reranker '{name}' not found; served rerankers: {served}", "model_not_found")
    return reranker
