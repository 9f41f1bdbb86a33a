"""Request dependencies: settings, the model registry, the collections."""

from __future__ import annotations

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


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_collections(request: Request) -> CollectionManager:
    return request.app.state.collections


async def get_fetcher(request: Request) -> ImageFetcher:
    return request.app.state.image_fetcher


FetcherDep = Annotated[ImageFetcher, Depends(get_fetcher)]
CollectionsDep = Annotated[CollectionManager, Depends(get_collections)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
