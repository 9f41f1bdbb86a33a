"""Who may call, how often, and a record of every call: one pure-ASGI middleware.

- Request id: a client's `x-request-id` (if it is short and printable) or a new one; returned as
  `x-request-id` on every response.
- API keys (when TESSERA_API_KEYS is set): `Authorization: Bearer <key>`, `api-key` or
  `x-api-key` (what the OpenAI, Azure-style and Cohere clients send). Every route but /health,
  /ready (and /metrics when TESSERA_METRICS_PUBLIC) needs one: 401 without or with a wrong one,
  403 for a read-only key on a write.
- Without keys (and without TESSERA_ALLOW_UNAUTHENTICATED) only loopback callers are served: 403
  for any other address. `tessera serve` already refuses to bind a public address then; this holds
  the same line when the app is started another way (`uvicorn app.main:app --host 0.0.0.0`).
- Rate limit (when TESSERA_RATE_LIMIT_PER_S > 0): a token bucket per key (per client address
  without keys): 429 with Retry-After.
- Log: one JSON line per request on the `tessera.access` logger: request id, method, route,
  status, latency, key id (never the key), client; never a body.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import domain_error_response
from app.core import metrics
from app.core.auth import ApiKey, KeyStore, RateLimiter, is_remote_caller
from app.core.errors import (
    InvalidApiKey,
    MissingApiKey,
    RateLimited,
    ReadOnlyKey,
    RemoteCallerRefused,
    TesseraError,
)

log = logging.getLogger("tessera.access")
_listener: logging.handlers.QueueListener | None = None
# Lines waiting for the writer thread at most (~1 KB each): past that, a stalled stderr drops lines.
ACCESS_LOG_QUEUE_LINES = 10_000


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Puts a line on a bounded queue, or drops it (counted in `tessera_access_log_dropped`) when
    the writer is that far behind. A stalled log driver must cost the server neither the event
    loop's time (a blocking put) nor memory without bound (an unbounded queue); nor may the drop
    be reported the usual way, by writing to the stderr that is stalled."""

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            metrics.ACCESS_LOG_DROPPED.inc()


def configure_access_log(level: str) -> None:
    """Access lines go through a bounded queue to a writer thread: a slow or blocked stderr (a full
    pipe, a stalled log driver) never blocks the event loop. Lines are plain JSON, one per request."""
    global _listener
    log.setLevel(level.upper())
    if _listener is not None:
        return
    records: queue.Queue[logging.LogRecord] = queue.Queue(ACCESS_LOG_QUEUE_LINES)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(message)s"))
    _listener = logging.handlers.QueueListener(records, stream)
    _listener.start()
    atexit.register(_flush_access_log)
    log.addHandler(DroppingQueueHandler(records))
    log.propagate = False


def _flush_access_log() -> None:
    """At exit: the writer finishes the queued lines, unless it is stuck on a stalled stderr (the
    queue is full, so the stop cannot even be queued), which must not hold the exit up."""
    if _listener is not None:
        with contextlib.suppress(queue.Full):
            _listener.stop()


# Paths that never need a key (liveness and readiness probes); /metrics joins them by setting.
ALWAYS_OPEN_PATHS = frozenset({"/health", "/ready"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_WRITE_METHODS = {"PUT", "DELETE", "PATCH"}


def is_write(method: str, path: str) -> bool:
    """Writes change stored state: PUT/DELETE anywhere, POST on /indexes except search."""
    if method in _WRITE_METHODS:
        return True
    return method == "POST" and path.startswith("/indexes") and not path.endswith("/search")


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyStore,
        limiter: RateLimiter,
        open_paths: frozenset[str],
        retry_after_s: int,
        log_requests: bool = True,
        is_open: Callable[[str], bool] = lambda _: False,
        loopback_only: bool = False,
    ) -> None:
        self.app = app
        self.keys = keys
        self.loopback_only = loopback_only  # no keys and not allowed open: other machines get 403
        self.limiter = limiter
        self.open_paths = open_paths
        self._is_open_prefix = is_open  # e.g. the console's static files
        self.retry_after_s = retry_after_s
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = dict(scope["headers"])
        request_id = _request_id(headers.get(b"x-request-id"))
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        key: ApiKey | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            key = self._admit(scope, headers)
        except TesseraError as exc:
            await domain_error_response(exc, self.retry_after_s)(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests and log.isEnabledFor(logging.INFO):
                route = scope.get("route")
                client = scope.get("client")
                record = {
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": getattr(route, "path", scope["path"] if status != 404 else "unmatched"),
                    "status": status,
                    "latency_ms": round((time.perf_counter() - start) * 1000, 2),
                    "key_id": key.key_id if key else None,
                    "client": client[0] if client else None,
                }
                log.info(orjson.dumps(record).decode())

    def _admit(self, scope: Scope, headers: dict[bytes, bytes]) -> ApiKey | None:
        """The caller's key (None without keys or on an open path); raises 401/403/429 errors."""
        path = scope["path"]
        key = None
        is_open = path in self.open_paths or self._is_open_prefix(path)
        if self.loopback_only and not is_open:
            client = scope.get("client")
            if client and is_remote_caller(client[0]):
                raise RemoteCallerRefused(
                    "this server has no API keys and answers only callers on its own machine: "
                    "set TESSERA_API_KEYS, or TESSERA_ALLOW_UNAUTHENTICATED=true to serve it open"
                )
        if self.keys.enabled and not is_open and scope["method"] != "OPTIONS":
            presented = _presented_key(headers)
            key = self.keys.authenticate(presented) if presented is not None else None
            if key is None:  # a failed attempt spends its address's tokens: guessing keys is rate-limited too
                self._limit(_client_address(scope))
                if presented is None:
                    raise MissingApiKey("an API key is required: send Authorization: Bearer <key>")
                raise InvalidApiKey("the API key is not valid")
            if key.read_only and is_write(scope["method"], path):
                raise ReadOnlyKey(f"key {key.key_id!r} is read-only; {scope['method']} {path} writes")
        if not is_open:
            self._limit(key.key_id if key else _client_address(scope))
        return key

    def _limit(self, caller: str) -> None:
        if not self.limiter.enabled:
            return
        wait = self.limiter.acquire(caller)
        if wait > 0:
            raise RateLimited(f"rate limit exceeded for {caller!r}; retry after {wait:.2f} s", retry_after=wait)


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _presented_key(headers: dict[bytes, bytes]) -> str | None:
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in (b"api-key", b"x-api-key"):
        value = headers.get(name)
        if value:
            return value.decode("latin-1").strip()
    return None


# Request ids: 32 hex digits like a uuid4's, from a random per-process prefix and a counter (a
# uuid4 per request costs a getrandom call and an object on every search's hot path).
_ID_PREFIX = os.urandom(10).hex()
_ID_COUNTER = itertools.count()


def _request_id(given: bytes | None) -> str:
    if given:
        text = given.decode("latin-1")
        if _REQUEST_ID.match(text):
            return text
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFF:012x}"
