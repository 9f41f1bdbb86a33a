"""Image item sources: base64 / data URIs, and the URL fetcher's SSRF policy.

Resolution is stubbed (names map to private addresses) and the transport records every request, so
refusals are shown to happen before any connection; the one fetch that succeeds goes to a loopback
server started here, allowed by an explicit test policy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import ipaddress
import threading
from collections.abc import Iterator

import httpx
import pytest

from app.core.config import Settings
from app.core.errors import ImageFetchRefused, ImageTooLarge, InvalidImage
from app.services.image_sources import ImageFetcher, decode_base64_image, image_bytes, is_public_address

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
SETTINGS = Settings(image_urls=True, max_image_bytes=4096, image_url_timeout_s=2)


def test_base64_and_data_uris() -> None:
    encoded = base64.b64encode(PNG).decode()
    assert decode_base64_image(encoded, SETTINGS, 0) == PNG
    assert decode_base64_image(f"data:image/png;base64,{encoded}", SETTINGS, 0) == PNG
    assert decode_base64_image(encoded[:20] + "\n" + encoded[20:], SETTINGS, 0) == PNG  # wrapped lines


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("not base64 at all!", "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image type"),
        ("data:application/pdf;base64,aGVsbG8=", "not an image type"),
        ("data:image/png,rawbytes", "base64-encoded"),
        ("data:garbage", "malformed data URI"),
    ],
)
def test_bad_base64_and_data_uris(value: str, match: str) -> None:
    with pytest.raises(InvalidImage, match=match):
        decode_base64_image(value, SETTINGS, 0)


def test_oversized_base64_is_refused_before_decoding() -> None:
    with pytest.raises(ImageTooLarge):
        decode_base64_image("A" * 10_000, SETTINGS, 0)


@pytest.mark.parametrize(
    "address",
    [
        "10.1.2.3",
        "127.0.0.1",
        "169.254.169.254",
        "192.168.0.5",
        "172.16.0.1",
        "0.0.0.0",
        "::1",
        "fd00::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1 (Python's is_global says True)
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1 (stored inverted)
        "224.0.0.1",
        "100.64.0.1",
    ],
)
def test_private_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


def test_public_addresses_are_public() -> None:
    assert is_public_address(ipaddress.ip_address("93.184.216.34"))
    assert is_public_address(ipaddress.ip_address("2606:2800:220:1:248:1893:25c8:1946"))
    assert is_public_address(ipaddress.ip_address("2002:5db8:d822::1"))  # 6to4 of 93.184.216.34


class Recorder(httpx.AsyncBaseTransport):
    """A transport that records every request it is asked to send and answers with a PNG."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, content=PNG)


def stub_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


PRIVATE_NAMES = {
    "metadata.internal": ["169.254.169.254"],
    "intranet.example": ["10.0.0.7"],
    "localhost.example": ["127.0.0.1"],
    "mixed.example": ["93.184.216.34", "192.168.1.1"],  # one private answer is enough to refuse
    "v6.example": ["::1"],
    "public.example": ["93.184.216.34"],
}


@pytest.mark.parametrize(
    "host", ["metadata.internal", "intranet.example", "localhost.example", "mixed.example", "v6.example"]
)
def test_private_hosts_are_refused_before_any_connection(host: str) -> None:
    transport = Recorder()
    fetcher = ImageFetcher(SETTINGS, resolver=stub_resolver(PRIVATE_NAMES), transport=transport)
    with pytest.raises(ImageFetchRefused, match="non-public address"):
        asyncio.run(fetcher.fetch(f"http://{host}/cat.png", 0))
    assert transport.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://public.example/cat.png",
        "gopher://public.example/",
        "http:///nohost",
        "http://unknown.example/x.png",
        "http://public.example:99999/x.png",
    ],
)
def test_bad_urls_are_refused_before_any_connection(url: str) -> None:
    transport = Recorder()
    fetcher = ImageFetcher(SETTINGS, resolver=stub_resolver(PRIVATE_NAMES), transport=transport)
    with pytest.raises(ImageFetchRefused):
        asyncio.run(image_bytes(url, SETTINGS, fetcher, 0))
    assert transport.requests == []


def test_urls_are_off_by_default() -> None:
    transport = Recorder()
    off = Settings()
    fetcher = ImageFetcher(off, resolver=stub_resolver(PRIVATE_NAMES), transport=transport)
    with pytest.raises(ImageFetchRefused, match="off"):
        asyncio.run(image_bytes("http://public.example/cat.png", off, fetcher, 0))
    assert transport.requests == []


def test_public_host_is_fetched() -> None:
    transport = Recorder()
    fetcher = ImageFetcher(SETTINGS, resolver=stub_resolver(PRIVATE_NAMES), transport=transport)
    assert asyncio.run(fetcher.fetch("https://public.example/cat.png", 0)) == PNG
    assert len(transport.requests) == 1


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/cat.png":
            self._send(200, PNG)
        elif self.path == "/big.png":
            self._send(200, b"\x00" * 10_000)
        elif self.path == "/to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://metadata.internal/latest/meta-data/")
            self.end_headers()
        elif self.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"\x89PNG")
            self.wfile.flush()
            threading.Event().wait(5)
        else:
            self._send(404, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def loopback_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def allow_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return address.is_loopback or is_public_address(address)


def fetch_from(url: str) -> bytes:
    async def go() -> bytes:
        fetcher = ImageFetcher(
            SETTINGS, resolver=stub_resolver({**PRIVATE_NAMES, "127.0.0.1": ["127.0.0.1"]}), allow=allow_loopback
        )
        try:
            return await fetcher.fetch(url, 0)
        finally:
            await fetcher.close()

    return asyncio.run(go())


def test_loopback_server_fetch_limits_redirects_and_timeout() -> None:
    with loopback_server() as base:
        assert fetch_from(f"{base}/cat.png") == PNG
        with pytest.raises(ImageTooLarge):
            fetch_from(f"{base}/big.png")
        with pytest.raises(ImageFetchRefused, match="non-public"):
            fetch_from(f"{base}/to-metadata")  # the redirect target is checked like the first URL
        with pytest.raises(ImageFetchRefused, match="404"):
            fetch_from(f"{base}/missing.png")
        with pytest.raises(ImageFetchRefused, match="longer than"):
            fetch_from(f"{base}/slow.png")


def test_loopback_is_refused_by_the_default_policy() -> None:
    with loopback_server() as base:
        fetcher = ImageFetcher(SETTINGS)
        with pytest.raises(ImageFetchRefused, match="non-public"):
            asyncio.run(fetcher.fetch(f"{base}/cat.png", 0))
