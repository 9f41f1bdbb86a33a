"""Requests uvicorn's parser refuses, against a real server on loopback with `tessera serve`'s
protocol: JSON error bodies, the connection closed, and the server still serving afterwards."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.api.http_protocol import INVALID_HTTP_CODE, JsonErrorHttpToolsProtocol


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = uvicorn.Config(_app, host="127.0.0.1", port=free, http=JsonErrorHttpToolsProtocol, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield free
    server.should_exit = True
    thread.join(5)


def _exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes the connection (bounded by a timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(raw)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "raw",
    [
        b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n",  # unknown method
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",  # unknown version
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",  # header without a colon
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello to a plain-HTTP port
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
    ],
)
def test_an_unparseable_request_gets_a_json_400_and_a_closed_connection(port: int, raw: bytes) -> None:
    answer = _exchange(port, raw)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == INVALID_HTTP_CODE and error["type"] == "invalid_request_error"
    assert error["message"].startswith("Invalid HTTP request received.")


def test_the_server_keeps_serving_after_a_refused_request(port: int) -> None:
    _exchange(port, b"FOO / HTTP/1.1\r\n\r\n")
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"ok")
