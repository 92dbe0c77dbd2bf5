"""Mount sdfs for real in a subprocess; always unmount, also when a test fails."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def mounted(store: Path, mountpoint: Path, model: Path, *extra: str, timeout: float = 90,
            command: list[str] | None = None, prefix: tuple[str, ...] = (), until=None, leave_stale: bool = False):
    """``command`` replaces the arguments after `sdfs -v` (e.g. a --config
    mount), ``prefix`` runs the daemon under a wrapper (e.g. setpriv), and
    ``until`` replaces "the mountpoint is mounted" as the sign it is up.
    ``leave_stale``: when the block ends normally with the daemon killed,
    leave its stale mount for the next mount to clear (what a user meets after
    a crash); on any failure it is cleared all the same."""
    if not _stale(mountpoint):
        mountpoint.mkdir(parents=True, exist_ok=True)
    log = store.parent / f"daemon-{time.monotonic_ns()}.log"
    if command is None:
        command = ["mount", str(store), str(mountpoint), "--model", str(model), "--device", "cpu",
                   "--quality", "high", "--fidelity-floor", "0:-1", "--foreground", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sdfs", "-v", *command],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    until = until or (lambda: os.path.ismount(mountpoint))
    ended_normally = False
    try:
        wait_for(lambda: until() or proc.poll() is not None, timeout, "the mount")
        if proc.poll() is not None:
            raise RuntimeError(f"sdfs mount exited {proc.returncode}: {log.read_text()}")
        proc.log = log
        yield proc
        ended_normally = True
    finally:
        if not (leave_stale and ended_normally and proc.poll() is not None and _stale(mountpoint)):
            _unmount(mountpoint, proc)


def _unmount(mountpoint: Path, proc: subprocess.Popen) -> None:
    if os.path.ismount(mountpoint):
        subprocess.run([FUSERMOUNT, "-u", str(mountpoint)], capture_output=True)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if os.path.ismount(mountpoint) or _stale(mountpoint):
        subprocess.run([FUSERMOUNT, "-u", "-z", str(mountpoint)], capture_output=True)


def _stale(mountpoint: Path) -> bool:
    """A dead daemon's mount: every call on the path fails with ENOTCONN."""
    try:
        os.stat(mountpoint)
        return False
    except OSError as error:
        return error.errno == errno.ENOTCONN


def wait_encoded(root: Path, timeout: float = 300) -> None:
    """Until no file under ``root`` is pending (user.sdfs.kind)."""

    def settled():
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and os.getxattr(path, "user.sdfs.kind") == b"pending":
                return False
        return True

    wait_for(settled, timeout, "pending encodes")


def assert_sizes_honest(root: Path) -> int:
    count = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_size == len(path.read_bytes()), path
            count += 1
    return count
