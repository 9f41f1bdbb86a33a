"""The HTTP/1.1 protocol `tessera serve` runs: uvicorn's httptools protocol with the guards a server
facing hostile clients needs below the app, each refusal in the API's JSON error shape.

Everything here happens before a request reaches the app, so the app's exception handlers cannot
shape it, and uvicorn alone leaves these gaps:
- a request it cannot parse (an unknown method, a malformed request line or header, TLS sent to the
  plain port) gets a text/plain `400 Invalid HTTP request received.`: here a JSON 400;
- the request line and headers are buffered without limit (one client sending a 200 MB URL or
  header grows the server by 200 MB): here more than `max_head_bytes` gets a JSON 431 and the
  connection is closed;
- nothing times out a connection that is slow to send its request: one that never finishes its head
  (slowloris), or stops sending a body it announced, holds its socket (and a task) for good, and
  enough of them exhaust the server's file descriptors. Here a head must arrive within
  `head_timeout_s` of its first byte (or of the connection), and a body may pause for at most
  `body_idle_timeout_s` between reads; either gets a JSON 408 (when no response has started) and
  the connection closed. Waits the server causes (reading paused while the app has not consumed a
  body, or a `100 Continue` the app has not yet asked for) do not count against the client;
- connections are accepted until the process runs out of file descriptors, and then the server's
  own files (the op log, snapshots, SQLite) fail to open as well: here a connection beyond
  `max_connections` (its share of the descriptor limit: `app.core.open_files`) gets a JSON 503 with
  `Retry-After` and is closed at once;
- a response sent before its request body was read whole (a 401 to an upload, a 413) leaves uvicorn
  reading and throwing away the rest of the body for as long as the client sends it: here the
  connection takes no further request and closes as nginx's lingering close does. The answer is
  followed by a FIN, the unread body is drained (so the client is not reset before it reads the
  answer) until the client stops for `lingering_timeout_s`, `lingering_time_s` has passed or
  `lingering_max_bytes` have come (a client on a fast link would otherwise have the event loop
  discard gigabytes: 43 GB in 30 s over loopback), then the connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.errors import error_body
from app.core import open_files

INVALID_HTTP_CODE = "invalid_http_request"
HEAD_TOO_LARGE_CODE = "request_head_too_large"
TIMEOUT_CODE = "request_timeout"
CONNECTION_LIMIT_CODE = "connection_limit"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with JSON refusals, a bound on the request head, read timeouts, a
    connection limit and a lingering close after early answers."""

    max_head_bytes = 64 * 1024  # request line + headers (nginx's default buffers hold 4 x 8 KiB)
    head_timeout_s = 60.0  # nginx's client_header_timeout
    body_idle_timeout_s = 60.0  # nginx's client_body_timeout: the longest pause between body reads
    lingering_time_s = 30.0  # nginx's lingering_time: the most an unread body is drained after its answer
    lingering_timeout_s = 5.0  # nginx's lingering_timeout: the longest pause while draining
    lingering_max_bytes = 4 * 1024 * 1024  # the most drained (Go's net/http reads 256 KiB, then closes)
    # The descriptors' split with the server's own files (app.core.open_files), taken at import:
    # `tessera serve` raises the soft limit before it imports this module.
    max_connections = open_files.connection_budget()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._reading_head = True  # until a head completes: the connection's first request
        self._reading_body = False
        self._read_timer: asyncio.TimerHandle | None = None
        self._body_read_at = 0.0  # loop time of the last body bytes: the timer checks it, not re-armed per chunk
        self._lingering_until: float | None = None  # set once an answer went out before its body was read
        self._lingered_bytes = 0
        if len(self.connections) > self.max_connections:  # `connections` holds this one too
            message = f"the server holds its limit of {self.max_connections} connections; retry shortly"
            self._refuse(503, message, CONNECTION_LIMIT_CODE, "service_unavailable_error", retry_after_s=1)
            return
        self._arm(self.head_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering_until is not None:  # the rest of an answered request's body: thrown away
            self._body_read_at = self.loop.time()
            self._lingered_bytes += len(data)
            if self._lingered_bytes > self.lingering_max_bytes:
                self._disarm()
                self.transport.close()
            return
        if self._reading_body:  # the client is still sending: its pause starts again
            self._body_read_at = self.loop.time()
        super().data_received(data)
        if self._reading_head and not self.transport.is_closing():
            # the head is still incomplete after this chunk, so all of it was head (but for the tail
            # of a request that ended inside it: a bounded overcount)
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(
                    431,
                    f"the request line and headers exceed {self.max_head_bytes // 1024} KiB",
                    HEAD_TOO_LARGE_CODE,
                )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._reading_head:  # a later request on a kept-alive connection: its own deadline
            self._reading_head, self._head_bytes = True, 0
            self._arm(self.head_timeout_s)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._reading_body = True  # until on_message_complete (at once when there is no body)
        self._body_read_at = self.loop.time()
        self._arm(self.body_idle_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._reading_body and not self.transport.is_closing():
            self._linger()  # answered before its body was read whole: no further request here
            return
        super().on_response_complete()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()  # the connection leaves HTTP: its timers are the WebSocket protocol's now
        self._reading_head = self._reading_body = False
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, f"{msg} The connection is closed.", INVALID_HTTP_CODE)

    # --- timers and refusals -------------------------------------------------------------------
    def _arm(self, seconds: float, callback: Callable[[], None] | None = None) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, callback or self._read_timed_out)

    def _linger(self) -> None:
        """Close after an answer sent before its request body was read: FIN after the answer, then
        drain what the client still sends until it pauses, the lingering time is up or the byte bound
        is passed (`data_received`)."""
        self.server_state.total_requests += 1  # as uvicorn's on_response_complete counts it
        self._reading_body = False
        self._body_read_at = self.loop.time()
        self._lingering_until = self._body_read_at + self.lingering_time_s
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # reading may be paused on the unread body; drain it now
        self._arm(self.lingering_timeout_s, self._linger_timed_out)

    def _linger_timed_out(self) -> None:
        self._read_timer = None
        now = self.loop.time()
        ends = min(self._lingering_until or now, self._body_read_at + self.lingering_timeout_s)
        if now < ends and not self.transport.is_closing():
            self._arm(ends - now, self._linger_timed_out)
        else:
            self.transport.close()

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self._reading_body:
            idle_s = self.loop.time() - self._body_read_at
            if idle_s < self.body_idle_timeout_s:  # bytes came since the timer was set: wait out the rest
                self._arm(self.body_idle_timeout_s - idle_s)
                return
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                self._body_read_at = self.loop.time()  # the server is the one waiting, not the client
                self._arm(self.body_idle_timeout_s)
                return
            if cycle is not None and cycle.response_started:
                self.transport.close()  # too late for a status: the app sees a disconnect
                return
            self._refuse(408, f"no request body bytes for {self.body_idle_timeout_s:g} s", TIMEOUT_CODE)
        elif self.cycle is not None and not self.cycle.response_complete:
            self._arm(self.head_timeout_s)  # a pipelined head waits while an earlier request is answered
        elif self._head_bytes or getattr(self, "url", b""):  # `url` exists once a request began
            self._refuse(408, f"the request head did not arrive within {self.head_timeout_s:g} s", TIMEOUT_CODE)
        else:
            self.transport.close()  # an idle connection that never began a request: closed quietly

    def _refuse(
        self,
        status: int,
        message: str,
        code: str,
        error_type: str = "invalid_request_error",
        retry_after_s: int | None = None,
    ) -> None:
        """Write a JSON error response and close the connection (the app's cycle, if any, sees a
        disconnect)."""
        self._disarm()
        self._reading_head = self._reading_body = False
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # nothing the app sends later reaches this closed socket
        body = error_body(message, code, error_type)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        if retry_after_s is not None:
            content.append(b"retry-after: %d\r\n" % retry_after_s)
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
