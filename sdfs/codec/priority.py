"""One model, many users: a lock that serves foreground threads first.

The mount's encoder keeps the VAE busy for minutes on a CPU; a reader who
opens a latent file must not queue behind that. Readers (the foreground) take
the model as soon as the forward pass in progress ends; the background thread
waits while any foreground thread wants it.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager


class PriorityLock:
    """Re-entrant; threads inside ``background()`` yield to all others."""

    def __init__(self):
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._foreground_waiting = 0
        self._local = threading.local()

    @contextmanager
    def background(self):
        before = getattr(self._local, "background", False)
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = before

    def __enter__(self):
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return self
            foreground = not getattr(self._local, "background", False)
            self._foreground_waiting += foreground
            try:
                self._cond.wait_for(lambda: self._owner is None and (foreground or not self._foreground_waiting))
            finally:
                self._foreground_waiting -= foreground
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._depth -= 1
            if not self._depth:
                self._owner = None
                self._cond.notify_all()
        return False
