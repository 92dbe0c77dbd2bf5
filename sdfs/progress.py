"""Progress of long jobs (``sdfs fsck --decode``, ``sdfs import``) on stderr.

Usage::

    from sdfs.progress import Progress

    with Progress(total_files, total_bytes, what="decoding") as progress:
        for item in work:
            ...
            progress.advance(files=1, nbytes=len(item))

``total_bytes`` may be None when unknown (the line then shows files only and
the ETA is estimated from files). ``advance`` takes deltas.

Where it goes:

* stderr is a terminal: a tqdm bar (files done/total, files/s, bytes/s, ETA),
  removed when the job ends.
* stderr is not a terminal (logs, systemd, CI): one plain line at most every
  ``interval`` seconds (default 10), e.g.
  ``sdfs: decoding: 120/1000 files, 3.1 MB/s, 2.4 files/s, ETA 2m05s`` (a slow
  job: ``..., 24.0 kB/s, 25.3 s a file, ...``: units follow the rate), and a final
  ``done`` line only when at least one progress line was printed, so short
  jobs stay silent.
* ``enabled=False`` shows nothing (for callers with a --quiet flag).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def human_bytes(n: float) -> str:
    """1,234 B, 14.8 MB: decimal units, as the MB/s of the progress line."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(self, total_files: int, total_bytes: int | None = None, what: str = "working",
                 stream: TextIO | None = None, interval: float = 10.0, enabled: bool = True):
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.what = what
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.files = 0
        self.nbytes = 0
        self.status = ""  # a caller's word on the line, after the rates (e.g. "2 encoder actors live")
        self._bar = None
        self._started = self._last_line = 0.0
        self._lines = 0

    def __enter__(self) -> "Progress":
        self._started = self._last_line = time.monotonic()
        if self.enabled and self._is_terminal():
            self._bar = self._make_bar()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._lines:
            self._print(f"{self._counts()}, {self._rate()} (done in {_duration(time.monotonic() - self._started)})")

    def advance(self, files: int = 0, nbytes: int = 0) -> None:
        self.files += files
        self.nbytes += nbytes
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(files)
            self._bar.set_postfix_str(", ".join(filter(None, (self._rate(), self.status))), refresh=False)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._print(self.line())

    def line(self) -> str:
        """The plain progress line (without the ``sdfs: what:`` prefix)."""
        eta = self._eta()
        return (f"{self._counts()}, {self._rate()}" + (f", ETA {_duration(eta)}" if eta is not None else "")
                + (f", {self.status}" if self.status else ""))

    # -- internals

    def _is_terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def _make_bar(self):
        try:
            from tqdm import tqdm
        except ImportError:  # tqdm is a dependency, but a bar is not worth failing for
            return None
        return tqdm(total=self.total_files, desc=f"sdfs: {self.what}", unit="file", file=self.stream,
                    leave=False, dynamic_ncols=True)

    def _counts(self) -> str:
        return f"{self.files}/{self.total_files} files"

    def _rate(self) -> str:
        """Bytes and files per second in units that suit them: a CPU encoding
        a photo a minute moves kB/s, never "0.0 MB/s"."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = f"{human_bytes(self.nbytes / elapsed)}/s"
        if not self.files:
            return rate
        per_second = self.files / elapsed
        return rate + (f", {per_second:.1f} files/s" if per_second >= 1 else f", {elapsed / self.files:.1f} s a file")

    def _eta(self) -> float | None:
        elapsed = time.monotonic() - self._started
        if self.total_bytes and self.nbytes:
            done = self.nbytes / self.total_bytes
        elif self.total_files and self.files:
            done = self.files / self.total_files
        else:
            return None
        return elapsed * (1 - done) / done if done < 1 else 0.0

    def _print(self, text: str) -> None:
        self._lines += 1
        print(f"sdfs: {self.what}: {text}", file=self.stream, flush=True)
