"""Where an image item's bytes come from: base64, a `data:image/...;base64,` URI, or (only when
TESSERA_IMAGE_URLS is on) an http(s) URL.

URL fetching is the classic SSRF hole, so it is closed by default and, when open, every hop is
checked before any connection: the scheme is http(s), the host resolves only to public addresses
(no private, loopback, link-local, multicast, reserved or unspecified ones: 10/8, 127/8,
169.254/16 (cloud metadata), ::1, fc00::/7 ...), redirects (at most 3) are checked the same way,
the whole fetch has one timeout, and the body is cut off past max_image_bytes. After connecting,
the peer address is checked again (a resolver that answered differently the second time, DNS
rebinding, is refused before the body is read).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpx

from app.core.config import Settings
from app.core.errors import ImageFetchRefused, ImageTooLarge, InvalidImage

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)
IMAGE_MIME_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "image/bmp", "image/tiff"}
)
MAX_REDIRECTS = 3
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)

Resolver = Callable[[str, int], Awaitable[list[str]]]
AddressPolicy = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Only globally routable unicast addresses. An IPv6 address that carries an IPv4 one (mapped,
    6to4 2002::/16, Teredo's client) is judged by that too: a relay may deliver it there, and
    Python counts 2002:7f00:1:: (6to4 of 127.0.0.1) as global."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        else:
            carried = [address.sixtofour, address.teredo[1] if address.teredo else None]
            if any(inner is not None and not is_public_address(inner) for inner in carried):
                return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified)


def decode_base64_image(value: str, settings: Settings, index: int) -> bytes:
    """Bare base64 or a data URI -> bytes, refusing a non-image type and sizes over the byte limit
    before decoding."""
    payload = value
    match = _DATA_URI.match(value)
    if match:
        mime = (match.group("mime") or "").lower()
        if mime not in IMAGE_MIME_TYPES:
            raise InvalidImage(
                f"image {index}: data URI type {mime or '(none)'!r} is not an image type "
                f"({', '.join(sorted(IMAGE_MIME_TYPES))})"
            )
        if not match.group("b64"):
            raise InvalidImage(f"image {index}: data URI must be base64-encoded (';base64,')")
        payload = value[match.end() :]
    elif value.startswith("data:"):
        raise InvalidImage(f"image {index}: malformed data URI")
    payload = "".join(payload.split())  # base64 wrapped over lines is still base64
    if len(payload) // 4 * 3 > settings.max_image_bytes:
        raise ImageTooLarge(
            f"image {index} has about {len(payload) // 4 * 3} bytes, more than the limit of {settings.max_image_bytes}"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"image {index} is not valid base64 (nor a data URI or an http(s) URL)") from None


class ImageFetcher:
    """Fetches image URLs under the policy above. `resolver` and `allow` are injectable so tests can
    map names to private addresses, and fetch from loopback servers they start, without touching
    the network."""

    def __init__(
        self,
        settings: Settings,
        resolver: Resolver = system_resolver,
        allow: AddressPolicy = is_public_address,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.allow = allow
        self._client = httpx.AsyncClient(follow_redirects=False, transport=transport, trust_env=False)

    async def check(self, url: str, index: int) -> None:
        """Refuse `url` unless it is http(s) and every address of its host passes the policy."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ImageFetchRefused(f"image {index}: only http(s) URLs are fetched, not {parts.scheme or 'this'!r}")
        if not parts.hostname:
            raise ImageFetchRefused(f"image {index}: URL has no host")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ImageFetchRefused(f"image {index}: URL has an invalid port") from None
        try:
            addresses = await self.resolver(parts.hostname, port)
        except (OSError, UnicodeError):
            raise ImageFetchRefused(f"image {index}: host {parts.hostname!r} does not resolve") from None
        if not addresses:
            raise ImageFetchRefused(f"image {index}: host {parts.hostname!r} does not resolve")
        for address in addresses:
            if not self.allow(ipaddress.ip_address(address.split("%")[0])):
                raise ImageFetchRefused(
                    f"image {index}: host {parts.hostname!r} resolves to a non-public address ({address}); refused"
                )

    async def fetch(self, url: str, index: int) -> bytes:
        if not self.settings.image_urls:
            raise ImageFetchRefused(
                f"image {index}: image URLs are off on this server (TESSERA_IMAGE_URLS); send base64 or a data URI"
            )
        try:
            async with asyncio.timeout(self.settings.image_url_timeout_s):
                return await self._fetch(url, index)
        except TimeoutError:
            raise ImageFetchRefused(
                f"image {index}: fetching took longer than {self.settings.image_url_timeout_s} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ImageFetchRefused(f"image {index}: fetch failed ({type(exc).__name__})") from None

    async def _fetch(self, url: str, index: int) -> bytes:
        limit = self.settings.max_image_bytes
        for _ in range(MAX_REDIRECTS + 1):
            await self.check(url, index)
            async with self._client.stream("GET", url, headers={"Accept": "image/*"}) as response:
                self._check_peer(response, index)
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise ImageFetchRefused(f"image {index}: the URL answered HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise ImageTooLarge(f"image {index}: the URL declares {declared} bytes, more than {limit}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ImageTooLarge(f"image {index}: the URL sent more than {limit} bytes")
                return bytes(body)
        raise ImageFetchRefused(f"image {index}: more than {MAX_REDIRECTS} redirects")

    def _check_peer(self, response: httpx.Response, index: int) -> None:
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if peer and not self.allow(ipaddress.ip_address(str(peer[0]).split("%")[0])):
            raise ImageFetchRefused(f"image {index}: connected to a non-public address ({peer[0]}); refused")

    async def close(self) -> None:
        await self._client.aclose()


async def image_bytes(value: str, settings: Settings, fetcher: ImageFetcher, index: int) -> bytes:
    """An image item's string -> its encoded bytes."""
    if _URL.match(value[:40]):  # any scheme: the fetcher refuses all but http(s)
        return await fetcher.fetch(value, index)
    return decode_base64_image(value, settings, index)
