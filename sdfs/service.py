"""Talking to systemd: readiness notification and the journal.

``notify`` is sd_notify(3) written out by hand. The protocol is one datagram
of ``KEY=value`` lines to the AF_UNIX socket named by $NOTIFY_SOCKET; that is
all sdfs needs, so no library: python-systemd needs libsystemd headers and a
compiler to install, sdnotify and friends are unmaintained single files doing
these same twenty lines, and neither may exist on the machine that runs
`pip install sdfs`. Without $NOTIFY_SOCKET (not under systemd, or a unit that
is not Type=notify) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=loading VAE"``) as one
    message; True when a notification socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not lines:
        return False
    if address.startswith("@"):  # abstract namespace: a leading NUL byte, no file
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
        return True
    except OSError as error:  # the manager went away; never fail the mount over it
        log.debug("sd_notify to %s failed: %s", address, error)
        return False


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd connected (systemd.exec:
    $JOURNAL_STREAM is "DEVICE:INODE" of that stream; a redirect of stderr,
    e.g. a daemon's log file, no longer matches)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)
