"""Errors as JSON: `{"error": {"message", "type", "code"}}` (the OpenAI shape), never a bare 500."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.search.manager import CollectionError

log = logging.getLogger(__name__)


def busy_error(what: str, retry_after_s: int) -> APIError:
    """429 for a full queue, with Retry-After (clients back off instead of the queue growing)."""
    return APIError(
        429,
        f"server busy: {what} queue is full",
        "queue_full",
        "rate_limit_error",
        headers={"Retry-After": str(retry_after_s)},
    )


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        error_type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.error_type = status, message, code, error_type
        self.headers = headers or {}


def error_response(
    status: int,
    message: str,
    code: str,
    error_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": error_type, "code": code}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc.status, exc.message, exc.code, exc.error_type, exc.headers)

    @app.exception_handler(CollectionError)
    async def _collection_error(_: Request, exc: CollectionError) -> Response:
        return error_response(exc.status, str(exc), exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(422, _validation_message(exc), "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal error", "internal_error", "server_error")
