"""glibc's heap policy during large builds (app/core/memory.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: in the test process, other threads and the garbage collector free
# mapped blocks of earlier tests at any moment, which moves the count this reads.
_PROBE = """
import ctypes, ctypes.util, gc, json, sys
import numpy as np
from app.core.memory import map_large_blocks_directly, release_free_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print(json.dumps(None)); sys.exit()
libc.mallinfo2.restype = MallInfo2
gc.disable()
if sys.argv[1] == "fixed":
    map_large_blocks_directly()
large = np.ones(20 << 20, np.uint8)  # freed: glibc's adaptive threshold now rises to 20 MB
del large
before = libc.mallinfo2().hblks
chunk = np.ones(4 << 20, np.uint8)  # a build chunk's size
mapped = libc.mallinfo2().hblks - before
del chunk
after_free = libc.mallinfo2().hblks - before
release_free_memory()
print(json.dumps([mapped, after_free]))
"""


def _probe(mode: str) -> list[int] | None:
    done = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_chunk_gets_its_own_mapping_even_after_a_larger_block_was_freed() -> None:
    adaptive = _probe("adaptive")
    if adaptive is None:
        pytest.skip("glibc without mallinfo2")
    assert adaptive == [0, 0]  # glibc's default: the 4 MB chunk came from the heap (and stays there)
    assert _probe("fixed") == [1, 0]  # mapped, and unmapped when freed
