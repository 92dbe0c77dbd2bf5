"""Talking to a running mount from another process: find it in the mount
table, read its live figures (the root's user.sdfs.daemon xattr), and
`sdfs sync`, which waits until its pending queue is empty."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from ..errors import SdfsError
from .filesystem import DAEMON_XATTR

FSTYPE = "fuse.sdfs"
FSNAME_PREFIX = "sdfs:"


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def sdfs_mounts() -> list[tuple[Path, Path]]:
    """(mountpoint, store) of every sdfs mount this process can see."""
    mounts = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 2 and tail[0] == FSTYPE and tail[1].startswith(FSNAME_PREFIX):
            mounts.append((Path(_unescape(fields[4])), Path(_unescape(tail[1][len(FSNAME_PREFIX):]))))
    return mounts


def mount_type(path: Path) -> str | None:
    """The filesystem type mounted at ``path`` (e.g. "fuse.sdfs"), or None."""
    target = Path(os.path.realpath(path))
    found = None
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # the last mount on a path is the one in effect
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and tail and Path(_unescape(fields[4])) == target:
            found = tail[0]
    return found


def store_of(mountpoint: Path) -> Path | None:
    target = Path(os.path.realpath(mountpoint))
    return next((store for point, store in sdfs_mounts() if point == target), None)


def mount_of(store: Path) -> Path | None:
    target = Path(os.path.realpath(store))
    return next((point for point, s in sdfs_mounts() if s == target), None)


def daemon_state(mountpoint: Path) -> dict:
    try:
        return json.loads(os.getxattr(mountpoint, DAEMON_XATTR))
    except OSError as error:
        raise SdfsError(f"cannot ask the sdfs mount at {mountpoint}: {error.strerror}") from None


def sync(mountpoint: Path, timeout: float | None = None) -> int:
    """Wait until every closed file under the mount is in its final form."""
    if store_of(mountpoint) is None:
        raise SdfsError(f"{mountpoint} is not an sdfs mount (see `findmnt -t {FSTYPE}`)")
    started = time.monotonic()
    first = last_shown = None
    interactive = sys.stderr.isatty()
    while True:
        state = daemon_state(mountpoint)
        pending = state["pending"]
        if pending == 0:
            if first:
                print(f"sdfs sync: {first} pending files encoded in {time.monotonic() - started:.1f} s", file=sys.stderr)
            return 0
        first = first or pending
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            held = state.get("encoder", {}).get("deferred_open_files", 0)
            why = f" ({held} held open by readers; the encoder waits for them to close)" if held else ""
            raise SdfsError(f"{pending} files still pending after {timeout:g} s{why}; run `sdfs sync` again to keep waiting")
        if last_shown is None or interactive or time.monotonic() - last_shown >= 10:
            done = first - pending
            rate = done / elapsed if elapsed > 0 and done > 0 else 0
            eta = f", about {pending / rate:.0f} s left" if rate else ""
            end = "\r" if interactive else "\n"
            print(f"sdfs sync: {pending} files pending{eta}   ", end=end, file=sys.stderr, flush=True)
            last_shown = time.monotonic()
        time.sleep(0.5)
