"""Pure-ASGI middleware (cheaper per request than BaseHTTPMiddleware): payload cap, metrics, and
cancelling the work of a request whose client has gone."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.core import metrics


class PayloadLimitMiddleware:
    """413 for bodies over `max_bytes`, by Content-Length or, when chunked, while reading: the body
    is never buffered past the cap. Past it, the 413 is sent at once and the handler is told the
    client went away (whatever it answers then is dropped). The served protocol then ends the connection
    (app/api/http_protocol.py's lingering close), so a client that keeps sending is not read for ever."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body larger than {self.max_bytes} bytes"
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await error_response(413, message, "payload_too_large")(scope, receive, send)
                    return
                break
        received = 0
        started = refused = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await error_response(413, message, "payload_too_large")(scope, receive, send)
                    return {"type": "http.disconnect"}
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if refused:  # the 413 went out already
                return
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        await self.app(scope, limited_receive, tracking_send)


# Methods labelled by name; any other token a client sends is counted as "other", so a hostile
# client cannot grow the metric's series (and /metrics) without bound.
_LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# nginx's status for a request whose client closed the connection before the answer; never sent
CLIENT_CLOSED_REQUEST = 499


class MetricsMiddleware:
    """Counts requests by route template and status, and observes latency.

    Each (route, method, status) series is looked up once and kept: `labels()` takes a lock and
    builds a key per call, a measurable part of a sub-millisecond search. The series are bounded by
    the route templates, the labelled methods and the status codes the app answers. A request whose
    client left before the response started (its handler cancelled, nothing sent) counts as 499,
    not as a server error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _series_for(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        method = method if method in _LABELLED_METHODS else "other"
        key = (route, method, status)
        series = self._series.get(key)
        if series is None:
            series = (metrics.REQUESTS.labels(route, method, str(status)), metrics.REQUEST_LATENCY.labels(route))
            self._series[key] = series
        return series

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def capture(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        except BaseException:
            status = status or 500  # raised before answering: a server error
            raise
        finally:
            # returned without answering: the client went away first (cancel-on-disconnect)
            status = status or CLIENT_CLOSED_REQUEST
            route = scope.get("route")
            count, latency = self._series_for(getattr(route, "path", "unmatched"), scope["method"], status)
            count.inc()
            latency.observe(time.perf_counter() - start)


class CancelOnDisconnectMiddleware:
    """Cancels a request's handler when its client disconnects before the response starts, so the
    batcher drops its queued inputs instead of computing them for nobody.

    Once the handler has read the whole body, a timer starts; if the handler is still running
    `watch_after_s` later, a watcher waits on the connection's next message, and an
    `http.disconnect` before `http.response.start` cancels the handler. The timer is there because
    most requests (a search, a short embedding) finish well before it fires: arming and disarming a
    timer costs a fraction of creating, cancelling and awaiting a task per request, and a client
    that gives up within `watch_after_s` costs at most that much work. A handler that reads again
    after the body gets the message the watcher saw."""

    def __init__(self, app: ASGIApp, watch_after_s: float = 0.01) -> None:
        self.app, self.watch_after_s = app, watch_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        handler = asyncio.current_task()
        started = False
        timer: asyncio.TimerHandle | None = None
        watcher: asyncio.Task[Message] | None = None

        async def watch() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not started and handler is not None:
                handler.cancel()
            return message

        def start_watching() -> None:
            nonlocal timer, watcher
            timer = None
            watcher = loop.create_task(watch())

        async def watched_receive() -> Message:
            nonlocal timer
            if timer is not None:  # a read after the body, before the timer fired: watch now
                timer.cancel()
                start_watching()
            if watcher is not None:  # the body was read: the next message is the watcher's
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                timer = loop.call_later(self.watch_after_s, start_watching)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, watched_receive, tracking_send)
        except asyncio.CancelledError:
            if started or watcher is None or not watcher.done():
                raise  # cancelled from outside (shutdown), not by a disconnect
        finally:
            if timer is not None:
                timer.cancel()
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
