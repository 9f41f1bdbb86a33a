"""Pure-ASGI middleware (cheaper per request than BaseHTTPMiddleware): payload cap, metrics, and
cancelling the work of a request whose client has gone."""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.core import metrics


class PayloadLimitMiddleware:
    """413 for bodies over `max_bytes`, by Content-Length or, when chunked, while reading: the body
    is never buffered past the cap. Past it, the 413 is sent at once and the handler is told the
    client went away (whatever it answers then is dropped)."""

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


class MetricsMiddleware:
    """Counts requests by route template and status, and observes latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capture(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            metrics.REQUESTS.labels(label, scope["method"], str(status)).inc()
            metrics.REQUEST_LATENCY.labels(label).observe(time.perf_counter() - start)


class CancelOnDisconnectMiddleware:
    """Cancels a request's handler when its client disconnects before the response starts, so the
    batcher drops its queued inputs instead of computing them for nobody.

    Once the handler has read the whole body, a watcher waits on the connection's next message; an
    `http.disconnect` before `http.response.start` cancels the handler. A handler that reads
    again after the body gets the message the watcher saw."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = asyncio.current_task()
        state = {"started": False}
        watcher: asyncio.Task[Message] | None = None

        async def watch() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not state["started"] and handler is not None:
                handler.cancel()
            return message

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:  # the body was read: the next message is the watcher's
                return await asyncio.shield(watcher)
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch())
            return message

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, watched_receive, tracking_send)
        except asyncio.CancelledError:
            if state["started"] or watcher is None or not watcher.done():
                raise  # cancelled from outside (shutdown), not by a disconnect
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
