"""Handing freed heap memory back to the operating system between the phases of a large build."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _glibc_function(name: str):  # type: ignore[no-untyped-def]
    """glibc's `name` (malloc_trim, mallopt), or None off Linux or without glibc (musl has neither)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
LARGE_BLOCK_BYTES = 1 << 20


def map_large_blocks_directly() -> None:
    """Blocks of 1 MiB and more that the heap has no free room for get their own mapping,
    returned to the system when freed. glibc otherwise raises its mmap threshold after each freed
    large block, up to 32 MB, and then grows the heap for a build's per-chunk arrays (10-20 MB
    each), where they stay after use: at the end of a 1M-vector build the exact-recall pass left
    ~100 MB behind. A fixed threshold ends that adaptation (free room already in the heap is still
    used first). A no-op where there is no glibc."""
    mallopt = _glibc_function("mallopt")
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)


def release_free_memory() -> None:
    """glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MB: a build's chunks)
    in the heap; `malloc_trim` returns them, so each build phase starts from its live data rather
    than the previous phase's high-water mark. A no-op where there is no glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is not None:
        trim(0)
