"""HTTP error responses: every error is JSON `{"error": {"message", "type", "code"}}` (the OpenAI
shape), never a bare 500. Domain errors get their status from the one table in app/core/errors.py."""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from app.core.errors import TesseraError, http_mapping
from app.core.text import is_encodable

log = logging.getLogger(__name__)


def error_body(message: str, code: str, error_type: str = "invalid_request_error") -> bytes:
    """The JSON error payload, for the app's responses and for refusals made below it (http_protocol)."""
    return orjson.dumps({"error": {"message": _encodable(message), "type": error_type, "code": code}})


def _encodable(message: str) -> str:
    # A message may quote what the client sent (an unknown model's name), and JSON lets a client send
    # a lone surrogate ("\ud800") that no UTF-8 encoder takes: the error would itself fail to encode.
    return message if is_encodable(message) else message.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(
    status: int,
    message: str,
    code: str,
    error_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_body(message, code, error_type), status_code=status, media_type="application/json", headers=headers
    )


def domain_error_response(exc: TesseraError, retry_after_s: int) -> Response:
    mapping = http_mapping(exc)
    headers: dict[str, str] = {}
    if mapping.retry_after:
        wait = exc.retry_after if exc.retry_after is not None else retry_after_s
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    if mapping.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(mapping.status, exc.message, exc.code, mapping.error_type, headers or None)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        message = str(err.get("msg")).removeprefix("Value error, ")  # pydantic's prefix for a ValueError
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    @app.exception_handler(TesseraError)
    async def _domain(_: Request, exc: TesseraError) -> Response:
        return domain_error_response(exc, retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, _validation_message(exc), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # every method the path takes (Starlette names one route's only)
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return error_response(exc.status_code, str(exc.detail), code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error", "internal_error", "server_error")


def _allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods - {"HEAD"})
