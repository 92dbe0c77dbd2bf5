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
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._resizers_waiting = 0
        self._depth = threading.local()

    @contextmanager
    def shared(self):
        depth = getattr(self._depth, "n", 0)
        if depth == 0:
            with self._cond:
                self._cond.wait_for(lambda: not self._exclusive and not self._resizers_waiting)
                self._shared += 1
        self._depth.n = depth + 1
        try:
            yield
        finally:
            self._depth.n = depth
            if depth == 0:
                with self._cond:
                    self._shared -= 1
                    self._cond.notify_all()

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
