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


# the clock and the pause between polls; tests replace them
_clock = time.monotonic
_sleep = time.sleep


class SyncEstimate:
    """Time left until a mount's queue is empty.

    The encoder finishes files a batch at a time: the queue drops by a batch
    at once, then nothing moves for minutes. So the pace is taken from those
    drops (seconds per file between the first and the last one seen), and in
    between the estimate counts down with the clock. (Files done divided by
    time elapsed would shrink all through a batch, and the estimate would rise.)

    Before the second drop the pace is unknown: after one drop it is a lower
    bound (the batch began before sync was watching), shown as "at least". A
    daemon whose encoder reports ``seconds_per_file`` (its own measure over
    the batches it finished) and ``batch_seconds`` (how long the batch in hand
    has run) gives an estimate from the start.
    """

    def __init__(self, now: float, pending: int, finished: int | None):
        self.started = now
        self.done = 0
        self.drops: list[tuple[float, int]] = []  # (when, files done by then)
        self._pending, self._finished = pending, finished

    def update(self, now: float, pending: int, finished: int | None) -> None:
        """``finished``: the encoder's count of files finished since it started
        (None if unknown); it tells completions apart from new files queued."""
        if finished is not None and self._finished is not None:
            step = finished - self._finished
        else:
            step = self._pending - pending
        self._pending, self._finished = pending, finished
        if step > 0:
            self.done += step
            self.drops.append((now, self.done))

    def seconds_left(self, now: float, pending: int, encoder: dict | None = None) -> tuple[float, bool] | None:
        """(seconds, exact): exact False means a lower bound; None: no idea yet."""
        encoder = encoder or {}
        if len(self.drops) >= 2:
            (first, done_first), (last, done_last) = self.drops[0], self.drops[-1]
            return max(pending * (last - first) / (done_last - done_first) - (now - last), 0.0), True
        pace = encoder.get("seconds_per_file")
        if pace:
            return max(pending * pace - encoder.get("batch_seconds", 0.0), 0.0), True
        if self.drops:
            last, done = self.drops[-1]
            return max(pending * (last - self.started) / done - (now - last), 0.0), False
        return None


def _left(estimate: tuple[float, bool] | None) -> str:
    from ..progress import _duration

    if estimate is None:
        return " (time left known once the first files are done)"
    seconds, exact = estimate
    if seconds < 1:
        return ", finishing" if exact else ""
    return f", {'about' if exact else 'at least'} {_duration(seconds)} left"


def describe_encoding(encoding: list[dict] | None) -> str:
    """The batches in hand (one a busy lane), for people:
    "/a/big.png (decode, tile 12 of 48); /b.png and 3 more"."""
    if isinstance(encoding, dict):  # a daemon of sdfs before the encoder's lanes
        encoding = [encoding]
    described = []
    for batch in encoding or ():
        if not batch.get("files"):
            continue
        # a name that is no UTF-8 keeps its bytes as surrogates: printable as escapes
        files = [name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for name in batch["files"]]
        what = files[0] if len(files) == 1 else f"{files[0]} and {len(files) - 1} more"
        if "tiles" in batch:
            what += f" ({batch['pass']}, tile {batch['tiles_done']} of {batch['tiles']})"
        described.append(what)
    return "; ".join(described)


def _finished(state: dict) -> int | None:
    finished = state.get("encoder", {}).get("finished")
    return sum(finished.values()) if isinstance(finished, dict) else None


def sync(mountpoint: Path, timeout: float | None = None) -> int:
    """Wait until every closed file under the mount is in its final form."""
    if store_of(mountpoint) is None:
        raise SdfsError(f"{mountpoint} is not an sdfs mount (see `findmnt -t {FSTYPE}`)")
    started = _clock()
    first = last_shown = estimate = None
    interactive = sys.stderr.isatty()
    while True:
        state = daemon_state(mountpoint)
        pending = state["pending"]
        now = _clock()
        if pending == 0:
            _flush(mountpoint)
            if first:
                print(f"sdfs sync: {first} pending files encoded in {now - started:.1f} s", file=sys.stderr)
            return 0
        if estimate is None:
            estimate = SyncEstimate(now, pending, _finished(state))
        else:
            estimate.update(now, pending, _finished(state))
        first = first or pending
        elapsed = now - started
        if timeout is not None and elapsed >= timeout:
            held = state.get("encoder", {}).get("deferred_open_files", 0)
            why = f" ({held} held open by writers with unsaved changes; they are encoded once closed)" if held else ""
            raise SdfsError(f"{pending} files still pending after {timeout:g} s{why}; run `sdfs sync` again to keep waiting")
        if last_shown is None or interactive or now - last_shown >= 10:
            left = _left(estimate.seconds_left(now, pending, state.get("encoder")))
            encoding = describe_encoding(state.get("encoder", {}).get("encoding"))
            line = f"sdfs sync: {pending} files pending{left}" + (f"; encoding {encoding}" if encoding else "")
            print(line.ljust(79) if interactive else line, end="\r" if interactive else "\n", file=sys.stderr, flush=True)
            last_shown = now
        _sleep(0.5)



def _flush(mountpoint: Path) -> None:
    """Every commit the mount made is durable once this returns: fsync() of
    the mount's root folder reaches the daemon, which syncs the store (as its
    owner: this process may not be allowed to open the store's files)."""
    try:
        fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise SdfsError(f"every file is encoded, but the store could not be synced: {error.strerror}; "
                        "run `sync` to be sure it is on disk") from None
