"""glibc malloc settings for processes on the request path (the API and the workers).

By default glibc serves every block over 128 KB with a fresh mmap and returns it on free, so each
copy of a 300 KB photo (the request body, the image part, the image handed to a worker) and each
decoded image or input tensor starts with page faults: a 280 KB copy took 300 us instead of 15 on
our 2-core machines. Each thread also gets its own arena, so a worker's lane threads, taking frames
in turn, each warm their own memory: the demo detector's p50 in a worker was 2-3 ms slower than the
same model in a one-thread loop. Large blocks from the heap, kept up to a bound, and one arena,
remove both. The bound keeps memory returned after a burst; DETSERVE_MALLOC_TUNING=0 turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("detserve.allocator")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters
MMAP_THRESHOLD = 32 * 1024 * 1024  # blocks up to this come from the heap (a 1280x1280 input: 20 MB)
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory at the heap's top beyond this goes back to the OS


def tune() -> bool:
    """Apply the settings to this process (call before it starts threads); False where the C
    library is not glibc or DETSERVE_MALLOC_TUNING=0."""
    if os.environ.get("DETSERVE_MALLOC_TUNING", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1)))
    if not done:
        log.warning("glibc refused a malloc setting; running with its defaults")
    return done
