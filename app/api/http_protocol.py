"""The HTTP/1.1 protocol `tessera serve` runs: uvicorn's httptools protocol, answering a request it
cannot parse in the API's JSON error shape instead of uvicorn's plain text.

A malformed request line, an unknown method (`FOO / HTTP/1.1`), a bad header or an unsupported
upgrade never reaches the app, so its exception handlers cannot shape the answer: uvicorn writes
`400 Invalid HTTP request received.` as text/plain and closes the connection. Clients and proxies
that parse every error body as JSON should not need a second code path for these, so this keeps
uvicorn's status, message and closing of the connection and changes only the body's format.
"""

from __future__ import annotations

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

INVALID_HTTP_CODE = "invalid_http_request"


def invalid_http_body(message: str) -> bytes:
    """The JSON error body for a request the HTTP parser refused (uvicorn's `message`)."""
    error = {"message": f"{message} The connection is closed.", "type": "invalid_request_error"}
    return orjson.dumps({"error": {**error, "code": INVALID_HTTP_CODE}})


class JsonErrorHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with a JSON body on its 400 for unparseable requests."""

    def send_400_response(self, msg: str) -> None:
        body = invalid_http_body(msg)
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
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
