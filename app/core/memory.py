"""Handing freed heap memory back to the operating system between the phases of a large build."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl has no malloc_trim)
        return None


def release_free_memory() -> None:
    """glibc keeps freed blocks below its adaptive mmap threshold (up to 32 MB: a build's chunks)
    in the heap; `malloc_trim` returns them, so each build phase starts from its live data rather
    than the previous phase's high-water mark. A no-op where there is no glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
