"""The FastAPI application: `uvicorn app.main:app` or `tessera serve`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.api.access import ALWAYS_OPEN_PATHS, AccessMiddleware, configure_access_log
from app.api.errors import install_error_handlers
from app.api.json_route import DirectCallMiddleware
from app.api.middleware import CancelOnDisconnectMiddleware, MetricsMiddleware, PayloadLimitMiddleware
from app.api.openapi_doc import install_openapi
from app.api.routes import classify, embeddings, health, indexes, models, rerank
from app.api.routes.console import install_console, is_console_path
from app.core import open_files
from app.core.auth import KeyStore, RateLimiter, parse_keys
from app.core.config import Settings, env_file_problem, get_settings
from app.inference.registry import ModelRegistry
from app.search.manager import CollectionManager
from app.services.image_sources import ImageFetcher

# Probes and scrapes, polled every few seconds, would drown the request spans.
_UNTRACED_PATHS = frozenset({"/health", "/ready", "/metrics"})


def telemetry_config(settings: Settings) -> TelemetryConfig:
    """FastAPI's native OpenTelemetry, on only with `TESSERA_OPENTELEMETRY=true`: on by default it asks
    the global providers on every request (~5 us of a ~0.3 ms search) and acts only where a process
    configured them; our metrics are Prometheus (GET /metrics). On, it uses the process's providers
    (`opentelemetry-instrument`, an SDK set up by the embedding program, or OTLP from the
    environment with `FASTAPI_OTEL_AUTO_CONFIGURE=true`) for spans and duration metrics, and leaves out
    probes and scrapes."""
    on = settings.opentelemetry
    return {
        "tracing": on,
        "metrics": on,
        # Its logs carry validation messages, which quote request bodies; the access log never does.
        "logs": False,
        "exclude": lambda scope: scope.get("path") in _UNTRACED_PATHS,
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None and (problem := env_file_problem()) is not None:
        # `tessera serve` says this in one line; started by uvicorn directly, the import fails here
        # rather than serving without the keys a secret that failed to mount was meant to hold.
        raise RuntimeError(problem)
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        open_files.raise_soft_limit()  # collections hold files open: the common default of 1,024 is few
        registry = ModelRegistry(settings)
        registry.load()
        registry.start()
        collections = CollectionManager.from_settings(settings)
        await asyncio.to_thread(collections.open_all)  # replays each collection's log
        app.state.registry = registry
        app.state.collections = collections
        app.state.image_fetcher = ImageFetcher(settings)
        try:
            yield
        finally:
            await app.state.image_fetcher.close()
            await registry.stop()
            await asyncio.to_thread(collections.close)

    app = FastAPI(
        title="Tessera",
        version=__version__,
        summary="Embeddings, search and reranking on ONNX Runtime / OpenVINO.",
        lifespan=lifespan,
        telemetry=telemetry_config(settings),
    )
    app.state.settings = settings
    logging.getLogger("app").setLevel(settings.log_level.upper())
    configure_access_log(settings.log_level)
    install_error_handlers(app, settings.retry_after_s)
    install_openapi(app)
    # Routes are tried in order, ~2.5-3 us per route tried before the one that matches (FastAPI
    # 0.165: a router's 10th route answered ~25 us after its 1st), so the hot routes come first.
    app.include_router(embeddings.router)
    app.include_router(indexes.router)
    app.include_router(models.router)
    app.include_router(rerank.router)
    app.include_router(classify.router)
    app.include_router(health.router)
    install_console(app)
    app.add_middleware(DirectCallMiddleware, paths=("/indexes/{name}/search", "/v1/embeddings", "/embed"))
    app.add_middleware(CancelOnDisconnectMiddleware)  # sees the body as the handler reads it
    app.add_middleware(PayloadLimitMiddleware, max_bytes=settings.max_payload_bytes)
    app.add_middleware(MetricsMiddleware)
    open_paths = ALWAYS_OPEN_PATHS | ({"/metrics"} if settings.metrics_public else set())
    keys = KeyStore(parse_keys(settings.api_keys))
    app.add_middleware(
        AccessMiddleware,
        keys=keys,
        loopback_only=not keys.enabled and not settings.allow_unauthenticated,
        limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        open_paths=frozenset(open_paths),
        is_open=is_console_path,
        retry_after_s=settings.retry_after_s,
        log_requests=settings.access_log,
    )
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:  # outermost: a browser's preflight is answered before any key check
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["authorization", "content-type", "api-key", "x-api-key", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
        )
    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
app = create_app()
