"""The pure-ASGI middleware, driven directly: cancelling a handler whose client has gone, and the
request metrics' series."""

from __future__ import annotations

import asyncio

from prometheus_client import generate_latest

from app.api.middleware import CancelOnDisconnectMiddleware, MetricsMiddleware
from app.core.metrics import REGISTRY

SCOPE = {"type": "http", "method": "POST", "path": "/x", "headers": []}


def _connection(disconnect_after_s: float):  # type: ignore[no-untyped-def]
    """A receive that hands over one whole body, then an `http.disconnect` after a delay, and a send
    that records what was sent."""
    body_sent = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.sleep(disconnect_after_s)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    return receive, send, sent


def test_a_handler_whose_client_disconnects_before_the_response_is_cancelled() -> None:
    seen: list[str] = []

    async def slow_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def run() -> list[dict]:
        receive, send, sent = _connection(disconnect_after_s=0.05)
        await asyncio.wait_for(CancelOnDisconnectMiddleware(slow_handler)(SCOPE, receive, send), timeout=5)
        return sent

    assert asyncio.run(run()) == []  # returned long before the 30 s sleep, nothing sent
    assert seen == ["cancelled"]


def test_a_disconnect_after_the_response_started_does_not_cancel() -> None:
    async def streaming_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)  # the client goes at 0.05 s
        await send({"type": "http.response.body", "body": b"done"})

    async def run() -> list[dict]:
        receive, send, sent = _connection(disconnect_after_s=0.05)
        await CancelOnDisconnectMiddleware(streaming_handler)(SCOPE, receive, send)
        return sent

    assert [m["type"] for m in asyncio.run(run())] == ["http.response.start", "http.response.body"]


def test_a_handler_reading_after_the_body_gets_the_next_message_before_the_watch_starts() -> None:
    """With the watch not yet started (a long `watch_after_s`), a second read still returns the
    connection's next message, and the handler that asked for it is not cancelled after responding."""
    messages: list[dict] = []

    async def rereading_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        messages.append(await receive())
        await send({"type": "http.response.body", "body": b""})

    async def run() -> list[dict]:
        receive, send, sent = _connection(disconnect_after_s=0.01)
        await CancelOnDisconnectMiddleware(rereading_handler, watch_after_s=60)(SCOPE, receive, send)
        return sent

    assert len(asyncio.run(run())) == 2
    assert messages == [{"type": "http.disconnect"}]


def test_a_fast_handler_runs_without_a_watcher_task() -> None:
    """The watcher starts only for handlers still running after `watch_after_s`: a request answered
    at once (a search on the event loop) costs no task."""
    tasks_seen: list[int] = []

    async def fast_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        tasks_seen.append(len(asyncio.all_tasks()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def run() -> int:
        receive, send, _sent = _connection(disconnect_after_s=60)
        await CancelOnDisconnectMiddleware(fast_handler)(SCOPE, receive, send)
        await asyncio.sleep(0.05)  # past watch_after_s: the disarmed timer must not start a watcher
        return len(asyncio.all_tasks())

    assert asyncio.run(run()) == 1
    assert tasks_seen == [1]


def test_request_metrics_label_unknown_methods_as_other() -> None:
    """A client's made-up method must not create a series of its own (unbounded /metrics)."""

    async def answer(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 405, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        middleware = MetricsMiddleware(answer)
        for method in ("BREW", "PROPFIND-x", "BREW", "POST"):
            receive, send, _ = _connection(disconnect_after_s=60)
            await middleware({**SCOPE, "method": method}, receive, send)

    def count(method: str) -> float:
        prefix = f'tessera_requests_total{{method="{method}",route="unmatched",status="405"}} '
        text = generate_latest(REGISTRY).decode()
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0.0)

    before_other, before_post = count("other"), count("POST")
    asyncio.run(run())
    assert count("other") - before_other == 3
    assert count("POST") - before_post == 1
    assert "BREW" not in generate_latest(REGISTRY).decode()


def _requests_counted(status: str) -> float:
    prefix = f'tessera_requests_total{{method="POST",route="unmatched",status="{status}"}} '
    text = generate_latest(REGISTRY).decode()
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0.0)


def test_a_request_whose_client_left_counts_as_499_and_one_that_raised_as_500() -> None:
    """A handler cancelled because its client disconnected answered nothing and failed nothing: the
    metrics must not report it as a server error. One that raised still is."""

    async def slow_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        await asyncio.sleep(30)

    async def failing_handler(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        raise RuntimeError("boom")

    async def run() -> None:
        receive, send, sent = _connection(disconnect_after_s=0.05)
        app = MetricsMiddleware(CancelOnDisconnectMiddleware(slow_handler))
        await asyncio.wait_for(app(SCOPE, receive, send), timeout=5)
        assert sent == []
        receive, send, _ = _connection(disconnect_after_s=60)
        try:
            await MetricsMiddleware(CancelOnDisconnectMiddleware(failing_handler))(SCOPE, receive, send)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the handler's error must propagate")

    before_499, before_500 = _requests_counted("499"), _requests_counted("500")
    asyncio.run(run())
    assert _requests_counted("499") - before_499 == 1
    assert _requests_counted("500") - before_500 == 1
