"""Cleans up after a driver that started a local Ray instance and died.

Ray ties the processes it starts to the driver, but not the agents its raylet
starts: after a ``kill -9`` of `sdfs import --ray`, a DashboardAgent and a
RuntimeEnvAgent (about 90 MB each) stayed forever, measured with Ray 2.60.
So the driver starts this process first, in a session of its own, with a
pipe on its stdin. While the pipe is open it notes the driver's descendants
each second; when the pipe closes (the driver ended, however it ended) it
kills those still running: a pid counts only with the start time it was
noted with, so a reused pid is never hit.

    python -m sdfs.reaper DRIVER_PID
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

POLL_SECONDS = 0.5  # a process Ray starts this soon before a kill -9 may escape


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold spaces
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below ``root``."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _stat(int(name))
            if found is not None:
                children.setdefault(found[0], []).append(int(name))
                started[int(name)] = found[1]
    below, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child != os.getpid() and child in started:
                below[child] = started[child]
                todo.append(child)
    return below


def reap(driver: int, signal_pipe: int) -> int:
    """Watch ``driver`` until ``signal_pipe`` closes; return how many of its
    descendants had to be killed. Only those started after this process are
    noted: the driver's children from before (a caller's) are not Ray's."""
    since = _stat(os.getpid())[1]
    noted: dict[int, int] = {}
    while True:
        noted.update((pid, started) for pid, started in descendants(driver).items() if started >= since)
        ready, _, _ = select.select([signal_pipe], [], [], POLL_SECONDS)
        if ready and not os.read(signal_pipe, 4096):
            break
    time.sleep(POLL_SECONDS)  # what a clean shutdown stops goes by itself
    killed = 0
    for pid, started in noted.items():
        found = _stat(pid)
        if found is not None and found[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


if __name__ == "__main__":
    sys.exit(1 if reap(int(sys.argv[1]), sys.stdin.fileno()) else 0)
