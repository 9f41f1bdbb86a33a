"""API keys and per-key rate limits (no HTTP here: app/api/access.py applies them to requests).

Keys come from `TESSERA_API_KEYS`: comma-separated entries, or the path of a file with one entry
per line (a Docker secret). An entry is `[name=]key[:ro]`: `name` identifies the key in logs
(default: the first 8 hex digits of its SHA-256; the key itself is never logged), `:ro` makes it
read-only (writes answer 403). Presented keys are compared by SHA-256 digest with
`hmac.compare_digest` against every stored digest, so timing says nothing about which one matched.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def _ip_is_loopback(host: str) -> bool | None:
    """Whether an IP address (bracketed or not) is loopback, IPv4-mapped IPv6 forms included (a
    dual-stack socket reports 127.0.0.1 as ::ffff:127.0.0.1); None when `host` is not an IP."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback(host: str) -> bool:
    """Whether a bind address is this machine's own: `localhost`, 127.0.0.0/8, ::1 and their mapped forms."""
    return host == "localhost" or bool(_ip_is_loopback(host))


@functools.lru_cache(maxsize=4096)  # asked on every request; a caller's address repeats
def is_remote_caller(host: str | None) -> bool:
    """A caller on another machine, as far as the server can tell: anything but a loopback address
    (`is_loopback`), so a name that is not an IP counts as remote (fail closed: behind a proxy whose
    forwarded header uvicorn trusts, the "address" may be an obfuscated identifier such as RFC
    7239's `_hidden`, or Starlette's test transport's "testclient", which a forwarded header could
    name too). No address (a Unix socket) is local."""
    return bool(host) and not is_loopback(host)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    digest: bytes
    read_only: bool = False


class KeyConfigError(ValueError):
    """TESSERA_API_KEYS cannot be parsed (the message says which entry)."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _key_file_text(path: Path) -> str:
    # -sig: a byte-order mark (a file saved on Windows) would otherwise begin the first key
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KeyConfigError(f"TESSERA_API_KEYS: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def parse_keys(value: str) -> list[ApiKey]:
    """Entries from the setting's value: a file path (one entry per line, # comments) or a list."""
    value = value.strip()
    if not value:
        return []
    path = Path(value)
    entries = (
        [line.strip() for line in _key_file_text(path).splitlines()]
        if "," not in value and path.is_file()
        else [part.strip() for part in value.split(",")]
    )
    keys = []
    for entry in entries:
        if not entry or entry.startswith("#"):
            continue
        name, _, key = entry.rpartition("=") if "=" in entry else ("", "", entry)
        read_only = key.endswith(":ro")
        key = key.removesuffix(":ro")
        if len(key) < 8:
            raise KeyConfigError(f"TESSERA_API_KEYS: a key must have at least 8 characters ({name or 'unnamed'})")
        keys.append(ApiKey(name or hashlib.sha256(key.encode()).hexdigest()[:8], _digest(key), read_only))
    return keys


class KeyStore:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found = None
        for key in self.keys:  # every digest compared: no early exit that timing could reveal
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class RateLimiter:
    """A token bucket per caller: `rate` requests/s sustained, bursts of `burst`.

    Callers by client address are unbounded (an IPv6 client can send from a new address every
    time), so at most `max_callers` buckets are kept: past that the least recently seen tenth goes.
    Those are the idlest, mostly refilled already (a full bucket is the same as none), and a caller
    being held back now is the most recently seen, so it keeps its place."""

    def __init__(self, rate: float, burst: int, max_callers: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.max_callers = max(10, max_callers)
        # caller -> (tokens, last refill time), least recently seen first (each call re-inserts it)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def acquire(self, caller: str) -> float:
        """0 if the request may go now, else the seconds until it may (the Retry-After)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            allowed = tokens >= 1
            self._buckets[caller] = (tokens - 1 if allowed else tokens, now)  # now the most recent
            if len(self._buckets) > self.max_callers:
                for idle in list(itertools.islice(self._buckets, self.max_callers // 10)):
                    del self._buckets[idle]
            return 0.0 if allowed else (1 - tokens) / self.rate

    def tracked(self) -> int:
        """How many callers have a bucket now."""
        return len(self._buckets)
