"""What `tessera serve`'s HTTP protocol does below the app, against a real server on loopback:
unparseable requests, oversized heads and stalled clients get JSON errors and a closed connection,
legitimate requests (large bodies, slow but steady clients, kept-alive connections) are served."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import ASGIApp

from app.api.http_protocol import (
    CONNECTION_LIMIT_CODE,
    HEAD_TOO_LARGE_CODE,
    INVALID_HTTP_CODE,
    TIMEOUT_CODE,
    GuardedHttpToolsProtocol,
)
from app.api.middleware import PayloadLimitMiddleware


class FastGuards(GuardedHttpToolsProtocol):
    """The served protocol with timeouts short enough for a test."""

    head_timeout_s = 1.0
    body_idle_timeout_s = 1.0
    lingering_time_s = 0.4
    lingering_timeout_s = 0.2
    lingering_max_bytes = 1 << 30  # the tests' clients send a few MB at most: time bounds the drain here


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Echoes the body's length: the body is read whole, as the API's routes read theirs."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # an answer that takes longer than the read timeouts
        await asyncio.sleep(2.5 * FastGuards.head_timeout_s)
    if scope["path"] == "/early":  # an answer before the body is read, as a 401 is
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"5")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b"early"})
        return
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


EARLY_CHUNKED_HEAD = b"POST /early HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def _body_piece(head: bytes) -> bytes:
    """64 KiB of body, framed as a chunk when `head` sends a chunked body."""
    chunk = b"x" * 65536
    return b"%x\r\n%s\r\n" % (len(chunk), chunk) if b"chunked" in head else chunk


class ThreeConnections(FastGuards):
    max_connections = 3


def _serve(protocol: type[GuardedHttpToolsProtocol], app: ASGIApp = _app) -> Iterator[int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=free, http=protocol, log_level="error")
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


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    yield from _serve(FastGuards)


@pytest.fixture(scope="module")
def limited_port() -> Iterator[int]:
    yield from _serve(ThreeConnections)


@pytest.fixture(scope="module")
def capped_port() -> Iterator[int]:
    """The served payload cap (a small one) in front of the echo app."""
    yield from _serve(FastGuards, PayloadLimitMiddleware(_app, max_bytes=1024))


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:  # the server closed while data it never read was in flight
        pass
    return b"".join(chunks)


def _exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes the connection (bounded by a timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(raw)
        return _read_all(conn)


def _error(answer: bytes, status: str, code: str, error_type: str = "invalid_request_error") -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == f"HTTP/1.1 {status}", answer[:200]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert error["code"] == code and error["type"] == error_type
    return error


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
    error = _error(_exchange(port, raw), "400 Bad Request", INVALID_HTTP_CODE)
    assert error["message"].startswith("Invalid HTTP request received.")


@pytest.mark.parametrize(
    "prefix",
    [b"GET /", b"GET / HTTP/1.1\r\nX-Big: ", b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 10],
    ids=["url", "one header", "many headers"],
)
def test_a_head_over_the_bound_is_refused_not_buffered(port: int, prefix: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(prefix)
        filler = (b"X-Many: 1\r\n" if prefix.endswith(b"1\r\n") else b"a") * 8192
        sent = 0
        try:  # far more than the bound: the server must stop reading and answer
            while sent < 50 * GuardedHttpToolsProtocol.max_head_bytes:
                conn.sendall(filler)
                sent += len(filler)
        except OSError:  # the server closed the connection mid-send
            pass
        answer = _read_all(conn)
    error = _error(answer, "431 Request Header Fields Too Large", HEAD_TOO_LARGE_CODE)
    assert "64 KiB" in error["message"]


def test_a_head_that_never_finishes_times_out_with_a_json_408(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        started = time.monotonic()
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        for _ in range(3):  # a byte now and then does not keep it alive (slowloris)
            time.sleep(0.15)
            conn.sendall(b"X")
        answer = _read_all(conn)
        waited = time.monotonic() - started
    _error(answer, "408 Request Timeout", TIMEOUT_CODE)
    # the deadline runs from the server's accept, a moment before the client's clock starts
    assert FastGuards.head_timeout_s - 0.1 <= waited < FastGuards.head_timeout_s + 2


def test_a_stalled_body_times_out_but_a_slow_steady_one_is_served(port: int) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\n"
    _error(_exchange(port, head + b"12345"), "408 Request Timeout", TIMEOUT_CODE)  # 5 of 15, then silence
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head)
        for _ in range(15):  # 15 bytes over ~1.5 s, never pausing near the idle limit
            time.sleep(0.1)
            conn.sendall(b"x")
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n15")


def test_an_idle_connection_is_closed_quietly(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        started = time.monotonic()
        assert _read_all(conn) == b""
        assert time.monotonic() - started < FastGuards.head_timeout_s + 2


def test_large_bodies_and_kept_alive_requests_are_served(port: int) -> None:
    body = b"y" * (3 * 1024 * 1024)  # far past the head bound and uvicorn's read-pause mark
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        first = conn.recv(65536)
        time.sleep(FastGuards.head_timeout_s / 2)  # kept alive between requests, under uvicorn's idle limit
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = _read_all(conn)
    assert first.startswith(b"HTTP/1.1 200 OK") and first.endswith(str(len(body)).encode())
    assert second.startswith(b"HTTP/1.1 200 OK") and second.endswith(b"\r\n\r\n0")


def test_a_pipelined_head_waits_for_the_answer_before_it(port: int) -> None:
    # a whole slow request, then the start of a second one that never ends: the first is answered
    # in full, and only then is the stalled second one refused
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n")
        answer = _read_all(conn)
    first, _, rest = answer.partition(b"\r\n\r\n0")
    assert first.startswith(b"HTTP/1.1 200 OK")
    _error(rest, "408 Request Timeout", TIMEOUT_CODE)


def test_a_connection_past_the_limit_gets_a_json_503_and_the_next_one_in_room_is_served(limited_port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", limited_port), timeout=5) for _ in range(3)]
    try:
        with socket.create_connection(("127.0.0.1", limited_port), timeout=5) as extra:
            answer = _read_all(extra)  # refused at once, before it sends anything
        error = _error(answer, "503 Service Unavailable", CONNECTION_LIMIT_CODE, "service_unavailable_error")
        assert "limit of 3 connections" in error["message"]
        assert b"\r\nretry-after: 1\r\n" in answer.partition(b"\r\n\r\n")[0]
    finally:
        held.pop().close()
    deadline = time.monotonic() + 3  # the server sees the close a moment later
    while True:
        answer = _exchange(limited_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if answer.startswith(b"HTTP/1.1 200 OK") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    for conn in held:
        conn.close()


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",  # refused by its length
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",  # refused once past the cap
    ],
)
def test_a_body_over_the_cap_gets_a_413_and_the_connection_closes(capped_port: int, head: bytes) -> None:
    # a client that keeps sending after its 413 is cut off (after the lingering time), not drained to
    # the end of its body
    answer, closed = _answer_then_keep_sending(capped_port, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "payload_too_large"
    assert closed


def test_an_answer_before_the_body_is_read_ends_the_connection(port: int) -> None:
    # as a 401 does: the app never reads the body, so the rest of it is not read and thrown away
    answer, closed = _answer_then_keep_sending(port, EARLY_CHUNKED_HEAD)
    assert answer.startswith(b"HTTP/1.1 401 ") and answer.endswith(b"early")
    assert closed


def test_after_an_early_answer_a_client_that_stops_sending_reads_it_whole_then_the_end(port: int) -> None:
    # the lingering close: the answer, then a clean end of stream (no reset) once the client pauses
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(EARLY_CHUNKED_HEAD + _body_piece(EARLY_CHUNKED_HEAD) * 8)
        started = time.monotonic()
        answer = b""
        while chunk_read := conn.recv(65536):  # raises on a reset
            answer += chunk_read
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 401 ") and answer.endswith(b"early")
    assert waited < FastGuards.lingering_time_s + 1.0


def test_the_drain_after_an_early_answer_stops_at_its_byte_bound() -> None:
    # a fast client is cut off once it has sent the bound, well before the lingering time
    class ByteBound(FastGuards):
        lingering_time_s = 30.0
        lingering_max_bytes = 256 * 1024

    for free in _serve(ByteBound):
        started = time.monotonic()
        answer, closed = _answer_then_keep_sending(free, EARLY_CHUNKED_HEAD)
        assert answer.startswith(b"HTTP/1.1 401 ")
        assert closed and time.monotonic() - started < 0.8 * FastGuards.body_idle_timeout_s


def _answer_then_keep_sending(port: int, head: bytes) -> tuple[bytes, bool]:
    """Send `head` and a first 64 KiB of body, read the answer, keep sending for most of the body
    idle timeout (so it never fires); return the answer and whether the server closed meanwhile."""
    piece = _body_piece(head)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head + piece)
        answer = conn.recv(65536)
        deadline = time.monotonic() + 0.8 * FastGuards.body_idle_timeout_s
        while time.monotonic() < deadline:
            try:
                conn.sendall(piece)
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):
                return answer, True
    return answer, False


def test_connections_leave_the_server_s_own_files_their_share_of_the_descriptors() -> None:
    from app.api.http_protocol import GuardedHttpToolsProtocol
    from app.core.open_files import connection_budget, own_files_budget, soft_limit

    assert connection_budget(1024) == 512 and connection_budget(65_536) == 32_768  # half
    assert connection_budget(800) == 288  # leaving 512 for the server's own files
    assert connection_budget(100) == 64  # never below a usable floor
    assert GuardedHttpToolsProtocol.max_connections == connection_budget()
    assert own_files_budget() == soft_limit() - connection_budget() - 64


def test_the_server_keeps_serving_after_refusals(port: int) -> None:
    _exchange(port, b"FOO / HTTP/1.1\r\n\r\n")
    answer = _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"\r\n\r\n0")
