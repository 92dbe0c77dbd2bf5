"""One model, many users: a lock that serves foreground threads first, and
everyone in turn.

The mount's encoder keeps the VAE busy for minutes on a CPU; a reader who
opens a latent file must not queue behind that. Readers (the foreground) take
the model as soon as the forward pass in progress ends; background threads
(the encoder's lanes) wait while any foreground thread wants it. Within each
class the lock goes in order of asking, so a thread that gives the model back
and asks again at once (a big image between two tiles) queues behind the
others instead of taking it straight back.
"""

from __future__ import annotations

import itertools
import threading
from contextlib import contextmanager


class PriorityLock:
    """Re-entrant; threads inside ``background()`` yield to all others;
    otherwise first come, first served."""

    def __init__(self):
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._tickets = itertools.count()
        self._waiting: dict[int, bool] = {}  # ticket -> foreground, in order of asking
        self._local = threading.local()

    @contextmanager
    def background(self):
        before = getattr(self._local, "background", False)
        self._local.background = True
        try:
            yield
        finally:
            self._local.background = before

    def in_background(self) -> bool:
        """Whether the calling thread is inside ``background()``."""
        return getattr(self._local, "background", False)

    def _next(self) -> int:
        """The ticket served next: the first foreground waiter, else the first waiter."""
        return next((ticket for ticket, foreground in self._waiting.items() if foreground), next(iter(self._waiting)))

    def __enter__(self):
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return self
            ticket = next(self._tickets)
            self._waiting[ticket] = not self.in_background()
            try:
                self._cond.wait_for(lambda: self._owner is None and self._next() == ticket)
            finally:
                del self._waiting[ticket]
                self._cond.notify_all()  # the next in line may be served now (or after this owner)
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc):
        with self._cond:
            self._depth -= 1
            if not self._depth:
                self._owner = None
                self._cond.notify_all()
        return False
