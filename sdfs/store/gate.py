"""Transactions share the environment; a map resize needs it alone.

LMDB's mdb_env_set_mapsize is only valid while this process has no
transaction open: called under concurrent readers and writers it fails them
with EINVAL ("mdb_txn_begin: Invalid argument") and invalidates live handles.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class ResizeGate:
    """A readers-writer lock: every transaction holds it shared, a resize
    holds it exclusively. A waiting resize goes before new transactions, so a
    busy store cannot starve it. Shared holds are re-entrant per thread (a
    transaction started inside another must not wait behind a pending resize
    that waits for the outer one)."""

    def __init__(self):
        self._lock = threading.Lock()  # taken directly on the fast path: Condition's own with is slower
        self._cond = threading.Condition(self._lock)
        self._shared = 0
        self._exclusive = False
        self._resizers_waiting = 0
        self._depth = threading.local()

    def acquire_shared(self) -> int:
        """Every transaction passes here (a stat, a lookup), so no waiting and
        no wake-ups unless a resize is pending, which is rare. Returns the
        depth to give release_shared()."""
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._lock:
                while self._exclusive or self._resizers_waiting:
                    self._cond.wait()
                self._shared += 1
        self._depth.n = depth + 1
        return depth

    def release_shared(self, depth: int) -> None:
        self._depth.n = depth
        if depth == 0:
            with self._lock:
                self._shared -= 1
                if self._resizers_waiting and not self._shared:
                    self._cond.notify_all()

    @contextmanager
    def shared(self):
        depth = self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared(depth)

    @contextmanager
    def exclusive(self):
        if getattr(self._depth, "n", 0):
            raise RuntimeError("a map resize inside a transaction of the same thread would deadlock")
        with self._cond:
            self._resizers_waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._resizers_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
