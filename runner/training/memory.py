"""The C allocator's settings for a process that trains and attacks nets on a CPU.

PyTorch's CPU tensors come from malloc. By default glibc hands a freed block at the top of its
heap back to the kernel once more than a threshold is free there, and maps large blocks
afresh each time, so every step's activations (10-20 MB at batch 100) are new pages the kernel
must zero on first touch. An iterative attack, which allocates and frees them hundreds of times
a second, then spends as much time in the kernel as in its convolutions. Keeping freed memory in
the heap lets the next step reuse it; the cost is that the process keeps its peak footprint.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# The largest block glibc will serve from the heap (its ceiling for M_MMAP_THRESHOLD on 64-bit
# systems); larger ones are still mapped and unmapped each time.
HEAP_BLOCKS_UP_TO = 32 * 1024 * 1024
# Free memory the heap may hold before any of it goes back to the kernel.
KEEP_FREE = 1024 * 1024 * 1024  # mallopt takes a C int

_done = False


def keep_freed_memory() -> bool:
    """Make malloc keep freed memory for reuse (once per process). Returns whether it applies:
    only glibc has these settings; elsewhere nothing changes."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Both calls also switch off glibc's own adjustment of the thresholds, which would undo them.
    _done = bool(mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE))
    return _done
