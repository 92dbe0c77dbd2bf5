"""One writer process per store: the mount daemon, `sdfs import` and
`sdfs fsck --repair` each hold an exclusive lock on STORE/sdfs.lock.

LMDB itself is safe with many processes, but two encoders, or an import that
replaces a file a mount is serving, would break the mount's promises (one
decode per file, no bytes swapped under an open reader). The lock is a
flock(2), so it vanishes with its process, also on kill -9: no stale locks.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from .store import StoreError

LOCK_NAME = "sdfs.lock"


class StoreBusy(StoreError):
    """Another sdfs process writes to this store."""


def what_to_do(holder: str) -> str:
    """Advice for whoever finds the store locked by ``holder`` (the lock
    file's line, e.g. "pid 12 (the mount at /mnt/images)")."""
    mount = re.search(r"\(the mount at (.+)\)$", holder)
    if mount:
        return f"unmount it first: sdfs umount {mount.group(1)}"
    return "wait for it to finish, or stop it, then try again"


class StoreLock:
    def __init__(self, store_path: str | os.PathLike, holder: str):
        """``holder`` says who holds it, for the message another process gets
        (e.g. "mount at /mnt/images")."""
        self.path = Path(store_path) / LOCK_NAME
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another sdfs process"
            os.close(fd)
            raise StoreBusy(f"store {self.path.parent} is in use by {other}; {what_to_do(other)}") from None
        self._fd = fd
        self._write_holder()
        return self

    def taken_over(self) -> None:
        """After fork(): the child shares the flock; name it, not the parent."""
        self._write_holder()

    def _write_holder(self) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} ({self.holder})\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def wait_until_free(store_path: str | os.PathLike, timeout: float) -> bool:
    """Whether the store's lock is free within ``timeout`` seconds (its
    holder, a stopping mount, has let go). Looks with a shared flock, held
    for no time and writing nothing; a lock it cannot open counts as free."""
    path = Path(store_path) / LOCK_NAME
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        finally:
            os.close(fd)  # drops the shared flock, if it was taken
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
