"""The kernel's caches of a file's attributes and pages, and what drops them.

The mount lets the kernel keep attributes for ATTR_TIMEOUT seconds (libfuse
3's attr_timeout; names for as long, entry_timeout), so a stat, a lookup or a
re-read of an unchanged file never reaches the daemon within that time:
that is most of the speed of listing, searching and re-reading (issue 9).
The kernel knows of every change made through the name it cached, and drops
what it has then. Two kinds of change it cannot see:

- the encoder replacing a file's stored bytes: its size, mtime, st_blocks and
  the bytes a read returns all change, with no call from the kernel;
- a change made through one name of a hard-linked file, seen through another
  name: libfuse's high-level API gives each path a kernel inode of its own.

For those, every path of the file that the kernel may still hold attributes
for is invalidated with libfuse's fuse_invalidate_path (3.2 and later), which
drops its attributes and its page cache. The kernel keeps attributes at most
ATTR_TIMEOUT after they were served, so only the paths served lately are
remembered: two generations of REMEMBER_S seconds each (a path lives between
one and two), so the table holds seconds of lookups, never the store. Pages
outlive that, but they are checked: libfuse's auto_cache
compares size and mtime at every open, and the kernel's auto_inval_data at
every refresh of the attributes, and both change when the bytes do.

The kernel drops a page only once the request reading or writing it is
answered, so an invalidation can wait for requests in flight. Hence: never
call invalidate() or changed() holding a lock such a request may wait for; a
request never invalidates its own path (changed() leaves it out); and the
calls themselves run on a thread of their own, which the caller waits for
only WAIT_S: two writes through two names of one file, each invalidating the
other's pages, would otherwise wait for each other forever. Past WAIT_S the
caller answers, its pages unlock, and the other invalidation completes.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 1.0  # seconds; also the mount's entry_timeout (libfuse's default)
REMEMBER_S = 2 * ATTR_TIMEOUT  # a path's attributes, served now, expire in the kernel by then
WAIT_S = 0.2  # the longest a caller waits for its invalidations (see above)


class KernelCache:
    def __init__(self):
        self._fuse = None  # libfuse's struct fuse *, once mounted
        self._invalidate_path = None
        self._lock = threading.Lock()
        # ino -> paths served: this generation and the one before (see the module's docstring)
        self._recent: dict[int, frozenset[str]] = {}
        self._older: dict[int, frozenset[str]] = {}
        self._turned = time.monotonic()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # (paths, done), None: stop
        self._thread: threading.Thread | None = None

    @staticmethod
    def supported(libfuse) -> bool:
        return hasattr(libfuse, "fuse_invalidate_path")

    def attach(self, libfuse) -> None:
        """Called in FUSE's init(), where the calling context names this mount's struct fuse."""
        invalidate = libfuse.fuse_invalidate_path
        invalidate.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
        invalidate.restype = ctypes.c_int
        self._fuse = ctypes.c_void_p(libfuse.fuse_get_context().contents.fuse)
        self._invalidate_path = invalidate
        self._thread = threading.Thread(target=self._run, name="sdfs-invalidate", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        """At unmount (FUSE's destroy()): libfuse's struct fuse goes next."""
        with self._lock:
            self._fuse = None
            self._recent, self._older = {}, {}
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def served(self, ino: int, path: str) -> None:
        """The kernel is about to cache ``path``'s attributes (getattr's answer)."""
        if self._fuse is None:
            return
        now = time.monotonic()
        with self._lock:
            if now - self._turned >= REMEMBER_S:  # what the older generation holds has expired in the kernel
                self._older, self._recent, self._turned = self._recent, {}, now
            paths = self._recent.get(ino)
            if paths is None or path not in paths:
                self._recent[ino] = (paths or frozenset()) | {path}

    def _paths(self, ino: int) -> frozenset[str]:
        """Under self._lock: the paths of ``ino`` the kernel may still hold attributes of."""
        return self._recent.get(ino, frozenset()) | self._older.get(ino, frozenset())

    def moved(self, ino: int, old: str, new: str, directory: bool) -> None:
        """A rename: libfuse's node of ``old`` is now ``new`` (and so are the paths below a folder)."""
        if self._fuse is None:
            return
        with self._lock:
            for generation in (self._recent, self._older):
                entries = list(generation.items()) if directory else [(ino, generation.get(ino))]
                for key, paths in entries:
                    if not paths:
                        continue
                    renamed = frozenset(new + p[len(old):] if p == old or p.startswith(old + "/") else p
                                        for p in paths)
                    if renamed != paths:
                        generation[key] = renamed

    def changed(self, ino: int, via: str | None) -> None:
        """A file changed through ``via`` (which the kernel updates itself):
        its other names drop what they cached. For a file with one name,
        a dictionary lookup."""
        if self._fuse is None:
            return
        with self._lock:
            paths = self._paths(ino)
        if paths and paths != {via}:
            self._drop(p for p in paths if p != via)

    def invalidate(self, ino: int) -> None:
        """The file changed with no call from the kernel: every name drops what it cached."""
        if self._fuse is None:
            return
        with self._lock:
            paths = self._paths(ino)
        if paths:
            self._drop(paths)

    def _drop(self, paths) -> None:
        done = threading.Event()
        self._requests.put((tuple(paths), done))
        if not done.wait(WAIT_S):
            log.debug("invalidating %d path(s) waits for requests in flight; answering first", len(paths))

    def _run(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            paths, done = request
            for path in paths:
                fuse = self._fuse
                if fuse is None:  # unmounted meanwhile: the kernel has let go of everything
                    break
                # -ENOENT: libfuse has forgotten the path, so the kernel holds nothing of it
                result = self._invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
                if result not in (0, -2):
                    log.debug("fuse_invalidate_path(%s) = %d", path, result)
            done.set()
