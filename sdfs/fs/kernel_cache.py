"""The kernel's page cache of open files, and what drops it.

The mount keeps the kernel's page cache of a file across opens (libfuse's
auto_cache: at each open libfuse asks getattr, and keeps the pages unless the
size or mtime changed) and does not check attributes at every read
(no_auto_inval_data), so a re-read of an unchanged file never reaches the
daemon. Attributes are not cached at all (attr_timeout=0: see mount.py for
the measurement that decided it), so stat always tells the truth; pages are
what can go stale, and only while a file is open, since every open checks.
Two changes reach an open file's pages without the kernel's knowing:

- the encoder replacing a file's stored bytes: readers open at that moment
  keep reading what they opened (Filesystem._swapping keeps a copy of it), and
  their pages refill with those bytes, which must go when the last of them
  closes;
- a write through one name of a hard-linked file, read through another name
  that is open: libfuse's high-level API gives every path a kernel inode, and
  a page cache, of its own.

For those, the paths by which a file is open are invalidated with libfuse's
fuse_invalidate_path (3.2 and later), which drops their attributes and pages.
Only open files are remembered, so the table never outgrows the open files.

The kernel drops a page only once the request reading or writing it is
answered, so an invalidation can wait for requests in flight. Hence: never
call invalidate() or changed() holding a lock such a request may wait for; a
request never invalidates its own path (changed() leaves it out); and the
calls run on a thread of their own, which the caller waits for only WAIT_S:
two writes through two names of one file, each invalidating the other's
pages, would otherwise wait for each other forever. Past WAIT_S the caller
answers, its pages unlock, and the other invalidation completes.

At the end libfuse unmounts, then frees its table of paths, and only then
calls destroy() (which detaches this): so no path is looked up once the
session's /dev/fuse descriptor is closed, which fuse_unmount does first.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading

log = logging.getLogger(__name__)

WAIT_S = 0.2  # the longest a caller waits for its invalidations (see above)


class KernelCache:
    def __init__(self):
        self._fuse = None  # libfuse's struct fuse *, once mounted
        self._invalidate_path = None
        self._mounted = lambda: False
        self._lock = threading.Lock()
        self._open: dict[int, frozenset[str]] = {}  # ino -> the paths it is open by
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
        session = libfuse.fuse_get_session
        session.argtypes, session.restype = (ctypes.c_void_p,), ctypes.c_void_p
        session_fd = libfuse.fuse_session_fd
        session_fd.argtypes, session_fd.restype = (ctypes.c_void_p,), ctypes.c_int
        se = ctypes.c_void_p(session(self._fuse))
        self._mounted = lambda: session_fd(se) >= 0  # -1 once fuse_unmount has run
        self._thread = threading.Thread(target=self._run, name="sdfs-invalidate", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        """At unmount (FUSE's destroy())."""
        with self._lock:
            self._fuse = None
            self._open = {}
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join()
            self._thread = None

    def opened(self, ino: int, path: str) -> None:
        if self._fuse is None:
            return
        with self._lock:
            paths = self._open.get(ino, frozenset())
            if path not in paths:
                self._open[ino] = paths | {path}

    def closed(self, ino: int) -> None:
        """The last handle of ``ino`` is gone (after any invalidation its close needs)."""
        with self._lock:
            self._open.pop(ino, None)

    def moved(self, ino: int, old: str, new: str, directory: bool) -> None:
        """A rename: libfuse's node of ``old`` is now ``new`` (and so are the paths below a folder)."""
        if self._fuse is None:
            return
        with self._lock:
            entries = list(self._open.items()) if directory else [(ino, self._open.get(ino))]
            for key, paths in entries:
                if not paths:
                    continue
                renamed = frozenset(new + p[len(old):] if p == old or p.startswith(old + "/") else p for p in paths)
                if renamed != paths:
                    self._open[key] = renamed

    def changed(self, ino: int, via: str | None) -> None:
        """A file changed through ``via`` (which the kernel updates itself):
        its other open names drop their pages. For a file open by one name,
        a dictionary lookup."""
        if self._fuse is None:
            return
        with self._lock:
            paths = self._open.get(ino)
        if paths and paths != {via}:
            self._drop(p for p in paths if p != via)

    def invalidate(self, ino: int) -> None:
        """The file changed with no call from the kernel: every open name drops its pages."""
        if self._fuse is None:
            return
        with self._lock:
            paths = self._open.get(ino)
        if paths:
            self._drop(paths)

    def _drop(self, paths) -> None:
        done = threading.Event()
        paths = tuple(paths)
        self._requests.put((paths, done))
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
                if fuse is None or not self._mounted():  # unmounting: the kernel lets go of everything
                    break
                # -ENOENT: libfuse has forgotten the path, so the kernel holds nothing of it
                result = self._invalidate_path(fuse, path.encode("utf-8", "surrogateescape"))
                if result not in (0, -2):
                    log.debug("fuse_invalidate_path(%s) = %d", path, result)
            done.set()
