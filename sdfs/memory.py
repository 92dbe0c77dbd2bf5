"""Hand memory back to the system after big files pass through.

glibc serves allocations over its mmap threshold (128 KiB at first) with
mmap, which free() unmaps at once. But after the first such block is freed it
raises the threshold to that block's size (up to 32 MiB), so the 1 MiB chunks
a big file moves in afterwards come from the heap and its arenas, and stay
there after the file is closed: the daemon's resident size would keep the high
mark of its busiest moment. Fixing the threshold keeps chunk-sized blocks on
mmap; malloc_trim() after a big file returns what the arenas still hold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h
MMAP_THRESHOLD = 256 << 10  # blocks this size and above are mapped, and unmapped when freed

_libc = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    _libc.mallopt, _libc.malloc_trim  # glibc only
except (OSError, AttributeError):  # musl, macOS: they return memory their own way
    _libc = None


def bound_heap() -> None:
    """Call once at the start of a long-running process (mount, import)."""
    if _libc is not None and _libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")


def release() -> None:
    """Give freed heap memory back now (after a big file is closed or deleted)."""
    if _libc is not None:
        _libc.malloc_trim(0)
