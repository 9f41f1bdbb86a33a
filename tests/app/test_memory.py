"""glibc's heap policy during large builds (app/core/memory.py)."""

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

from app.core.memory import map_large_blocks_directly, release_free_memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mapped_blocks() -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().hblks)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_block_of_a_few_megabytes_gets_its_own_mapping_after_a_larger_one_was_freed() -> None:
    try:
        _mapped_blocks()
    except AttributeError:
        pytest.skip("glibc without mallinfo2")
    map_large_blocks_directly()
    large = np.ones(20 << 20, np.uint8)  # freed: glibc's adaptive threshold would now rise to 20 MB
    del large
    before = _mapped_blocks()
    chunk = np.ones(4 << 20, np.uint8)  # a build chunk's size: mapped, so freeing it returns it
    assert _mapped_blocks() == before + 1
    del chunk
    assert _mapped_blocks() == before
    release_free_memory()  # callable any time, a no-op without glibc
