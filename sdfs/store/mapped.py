"""Hand back the pages of LMDB's map that big reads brought in.

LMDB reads through a shared, read-only mapping of data.mdb. Every page a read
touches stays mapped into the process and counts in its resident size
(RssFile) until the kernel needs the memory, so streaming a 4 GiB file out of
the store would show as 4 GiB of resident memory. After every so many bytes
read, the whole map is advised MADV_DONTNEED: for a shared file mapping that
only drops the page-table entries (the data stays in the page cache, and the
next access maps it again), so it is safe beside other readers. The map is
read-only (LMDB writes with pwrite unless MDB_WRITEMAP, which sdfs does not
use), so no change can be lost this way.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading

log = logging.getLogger(__name__)

DROP_EVERY = 64 << 20  # bytes read between two drops

try:
    _madvise = ctypes.CDLL(None, use_errno=True).madvise
    _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):  # not glibc/Linux: pages stay until the kernel reclaims them
    _madvise = None


class MappedPages:
    def __init__(self, env, data_file):
        self._env = env
        self._data_file = os.path.realpath(data_file)
        self._lock = threading.Lock()
        self._since_drop = 0

    def touched(self, nbytes: int) -> None:
        """Count bytes just read through the map; drop the map's pages now and then."""
        with self._lock:
            self._since_drop += nbytes
            if self._since_drop < DROP_EVERY:
                return
            self._since_drop = 0
        self.drop()

    def drop(self) -> None:
        """Drop the page-table entries of every mapping of the data file.
        LMDB does not say where its map is (mdb_env_info gives an address only
        with MDB_FIXEDMAP), so /proc/self/maps does."""
        if _madvise is None:
            return
        for start, end in self._mappings():
            if _madvise(start, end - start, mmap.MADV_DONTNEED) != 0:
                log.debug("madvise(MADV_DONTNEED) of the store's map failed: errno %d", ctypes.get_errno())

    def _mappings(self) -> list[tuple[int, int]]:
        found = []
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].rstrip("\n") == self._data_file:
                        start, end = fields[0].split("-")
                        found.append((int(start, 16), int(end, 16)))
        except OSError:  # no /proc: pages stay until the kernel reclaims them
            pass
        return found
