"""Host memory allocator settings for CPU training processes.

glibc's malloc gives large blocks (above its mmap threshold, 128 KiB to 32 MiB as it adapts) straight
back to the kernel when they are freed, and trims the top of its heap; the next step's activations
of the same size then come from fresh pages, and each 4 KiB page costs a page fault and a zeroing on
first touch. On the quickstart's update that was about 14,000 page faults per step (56 MiB zeroed).
`keep_freed_memory` raises both thresholds so that freed blocks stay in the process's heap and are
reused: the process keeps its peak heap (it does not shrink between steps), which a training process
reaches again every step anyway. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

#: mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks below this are served from the heap, not by their own mmap (bytes; glibc's maximum is 32 MiB
#: on 64-bit builds, HEAP_MAX_SIZE / 2).
MMAP_THRESHOLD_BYTES = 32 << 20
#: Free memory at the heap's top kept rather than returned to the kernel (bytes).
TRIM_THRESHOLD_BYTES = 1 << 30

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (`MMAP_THRESHOLD_BYTES`, `TRIM_THRESHOLD_BYTES`) for this
    process, once; returns whether they are in effect (False off Linux/glibc)."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
            return False
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    except OSError:
        return False
    _applied = ok
    return ok
