"""Request dependencies: settings, the model registry, the collections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.inference.registry import ModelRegistry
from app.search.manager import CollectionManager
from app.services.image_sources import ImageFetcher


# Dependencies are `async def` on purpose: FastAPI runs plain `def` dependencies in a thread pool,
# a thread hand-off per request that cost ~10% of the event loop under many small requests.
async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_collections(request: Request) -> CollectionManager:
    return request.app.state.collections


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a route may work with, as one dependency: FastAPI resolves each dependency of a
    request separately, about ten microseconds apiece in a minimal app, which a cheap search
    (~1 ms of CPU) paid four times over."""

    settings: Settings
    registry: ModelRegistry
    collections: CollectionManager
    fetcher: ImageFetcher


async def get_services(request: Request) -> Services:
    state = request.app.state
    return Services(state.settings, state.registry, state.collections, state.image_fetcher)


ServicesDep = Annotated[Services, Depends(get_services)]
CollectionsDep = Annotated[CollectionManager, Depends(get_collections)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
