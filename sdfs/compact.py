"""``sdfs compact STORE``: give the disk back the space LMDB keeps for reuse.

LMDB never shrinks data.mdb: pages freed by deletes go to its free list and
later writes reuse them, so after deleting much the file stays as large as it
ever was (`sdfs stats` shows both figures). Compacting writes a copy holding
only the live pages (``env.copy(compact=True)``) into a folder inside the
store (same filesystem, so the swap is a rename), makes it durable, and
renames it over data.mdb. A crash at any moment leaves the old data.mdb or
the new one, both whole; a leftover ``.compact-*`` folder is only a copy.

Who may be in the store meanwhile: the writer lock (sdfs.lock) keeps out a
mount, an import and fsck --repair. Readers (`sdfs stats`, `sdfs fsck`) take
no writer lock, so LMDB's own lock file tells: every process with the
environment open holds a shared fcntl lock on its first byte (LMDB's
protocol); compact refuses while another holds one, and holds it exclusively
while it copies, so a reader starting meanwhile waits. LMDB's lock table
(lock.mdb) describes one data file, so the new data.mdb comes with a new
lock.mdb, set up by compact's own first open of it before any reader gets
in; a reader that was waiting on the old one finds it spoilt and fails in one
line rather than reading the new file through the old table.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

import lmdb

from .errors import SdfsError
from .progress import human_bytes
from .stats import lmdb_space
from .store import Store
from .store.lock import StoreLock

HEADROOM = 16 << 20  # free disk beyond the copy's size, for LMDB's own rounding and the filesystem's


def run_compact(args) -> int:
    path = Path(args.store)
    Store(path, readonly=True).close()  # refuses what is not a store before a lock file is made in it
    with StoreLock(path, "sdfs compact"):
        before, after = compact(path)
    saved = before["file"] - after["file"]
    print(f"compacted {path}: data.mdb {human_bytes(before['file'])} -> {human_bytes(after['file'])}"
          f" ({human_bytes(max(saved, 0))} returned to the disk)")
    return 0


def compact(path: Path) -> tuple[dict, dict]:
    """Swap data.mdb (and lock.mdb) for a compacted copy (and a fresh lock
    file); the caller holds the writer lock. Returns lmdb_space() before and after."""
    old_lock = _LmdbLock(path / "lock.mdb")
    new_lock = None
    work = None
    try:
        store = Store(path, readonly=True)
        try:
            before = lmdb_space(store)
            old_lock.take("is open in another process (`sdfs stats` or `sdfs fsck`?); try again when it has finished")
            _check_disk(path, before["used"])
            work = Path(tempfile.mkdtemp(prefix=".compact-", dir=path))
            _copy(store, path, work)
            # LMDB's lock table describes the file it was made for, so the
            # new file gets a new lock file, held until it is set up
            new_lock = _LmdbLock(work / "lock.mdb", like=path / "lock.mdb")
            new_lock.take("could not lock its new lock file")
            _swap(path, work)
            # Readers that started meanwhile wait on the old lock file; when
            # it is let go they would take its table for the new file: spoil
            # it so that they fail (one line, "try again") instead.
            old_lock.spoil()
        finally:
            store.close()  # lets go of the old lock file (POSIX: closing drops the process's locks)
        # The first open of the new lock file, while this process holds it,
        # sets its table up for the new file; readers waiting on it then
        # read the new file. It also checks that the new file opens.
        fresh = Store(path, readonly=True)
        try:
            after = lmdb_space(fresh)
        finally:
            fresh.close()
    finally:
        for lock in (old_lock, new_lock):
            if lock is not None:
                lock.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return before, after


def _check_disk(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path).free
    if free < needed + HEADROOM:
        raise SdfsError(f"not enough free disk space to compact {path}: the copy needs about "
                        f"{human_bytes(needed + HEADROOM)} and the disk has {human_bytes(free)}; "
                        f"free some space and try again")


def _copy(store: Store, path: Path, work: Path) -> None:
    try:
        store.env.copy(str(work), compact=True)
    except lmdb.Error as error:
        if "No space left" in str(error) or shutil.disk_usage(path).free < HEADROOM:
            raise SdfsError(f"the disk of {path} filled up while compacting; nothing was changed: "
                            f"free some space and try again") from None
        raise SdfsError(f"cannot compact {path}: {str(error).strip().splitlines()[0]}") from None
    copy = work / "data.mdb"
    old = (path / "data.mdb").stat()
    os.chmod(copy, old.st_mode & 0o7777)
    if os.geteuid() == 0:  # root compacting a service user's store: keep it theirs
        os.chown(copy, old.st_uid, old.st_gid)
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)  # the copy's bytes are on disk before the rename can make it the store
    finally:
        os.close(fd)


def _swap(path: Path, work: Path) -> None:
    """Rename the copy and its lock file into place (each rename atomic: the
    store is the old file or the new one, never a mix), then make it durable."""
    os.rename(work / "data.mdb", path / "data.mdb")
    os.rename(work / "lock.mdb", path / "lock.mdb")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LmdbLock:
    """LMDB's per-environment fcntl lock (byte 0 of lock.mdb), taken exclusively."""

    def __init__(self, lock_path: Path, like: Path | None = None):
        self.path = lock_path
        self.fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if like is not None:  # the lock file it replaces: same mode and owner
            old = like.stat()
            os.chmod(lock_path, old.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(lock_path, old.st_uid, old.st_gid)

    def take(self, busy: str) -> None:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            raise SdfsError(f"store {self.path.parent} {busy}") from None

    def spoil(self) -> None:
        """Zero the lock table's magic number: LMDB then refuses to use it (MDB_INVALID)."""
        os.pwrite(self.fd, bytes(8), 0)

    def close(self) -> None:
        os.close(self.fd)
