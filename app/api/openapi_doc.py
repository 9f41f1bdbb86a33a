"""The OpenAPI document as the server really answers: every status an operation can give (with the
one JSON error shape), the API-key schemes, text/plain for /metrics, 503 for /ready.

FastAPI documents the success response and its own validation error shape; the rest is added here,
from the same rules the middleware and the error table apply, so a fuzzer checking responses
against the spec (schemathesis, in `make fuzz`) finds the spec right."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api.access import ALWAYS_OPEN_PATHS, is_write

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "code"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"}},
        }
    },
}
_DESCRIPTIONS = {
    "400": "a body that is not JSON text (e.g. not UTF-8), a model of the wrong kind, or an input the model "
    "does not embed (an image for a text model)",
    "401": "API key missing or not valid (when the server has keys)",
    "403": "a read-only key (or a read-only replica) on a write, or a caller on another machine when the "
    "server has no API keys and is not set to serve open",
    "404": "unknown model, collection, document or route",
    "405": "method not allowed on this path",
    "409": "already exists, an optimise is running, another process writes the collection, or the collection "
    "was embedded by another version of its model",
    "413": "payload, input count, input length or image size (bytes, pixels) over a limit",
    "422": "invalid request (types, values, filters, ids), or an image that cannot be decoded or fetched",
    "429": "queue full or rate limit; retry after Retry-After seconds",
    "507": "no room on the server: the data volume is full (nothing of the request was written; reads go on), "
    "or a new collection would pass the open-file limit",
}


def _statuses(method: str, path: str) -> set[str]:
    codes = {"401", "403", "404", "405", "422", "429"}
    if path in ALWAYS_OPEN_PATHS:
        return {"404", "405"}
    if path == "/metrics":
        return {"401", "403", "404", "405", "429"}
    if method in {"post", "put"}:
        codes |= {"400", "413"}
    if is_write(method.upper(), path):
        codes |= {"409", "507"}
    return codes


def _error_response(status: str) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if status == "429":
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    if status == "401":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return response


def build_openapi(app: FastAPI) -> dict[str, Any]:
    spec = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = spec.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "TESSERA_API_KEYS, when set"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"},
        "xApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status in sorted(_statuses(method, path)):
                responses[status] = _error_response(status)
            if path not in ALWAYS_OPEN_PATHS:
                operation["security"] = [{"bearer": []}, {"apiKey": []}, {"xApiKey": []}, {}]
    metrics = spec["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["responses"]["200"] = {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    ready = spec["paths"].get("/ready", {}).get("get")
    if ready is not None:
        ready["responses"]["503"] = {
            "description": "models not loaded",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return spec


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
