"""Background encoder: turns pending (staged raw) files into latent records in
batches, one forward pass per batch. Staged bytes are durable before a file
is queued, so a crash at any point loses nothing: the next mount resumes the
queue."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from ..ingest import judge
from ..store import Store

log = logging.getLogger(__name__)


class Encoder:
    def __init__(self, store: Store, codec, batch_size: int = 8):
        # set by the Filesystem: a context manager yielding "is this inode open?"
        # under the lock that open() takes, so no reader sees bytes swapped mid-read
        self.open_files = None
        self.store = store
        self.codec = codec
        self.batch_size = batch_size
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._stopping = False
        self._names: dict[int, str] = {}
        self.finished = Counter()  # outcomes since start, by verdict prefix
        self.deferred = 0
        self._thread = threading.Thread(target=self._run, name="sdfs-encoder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in hand; what is still queued stays queued, durably."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wait_for(self, ino: int, timeout: float | None = None) -> bool:
        """Block until ``ino`` has left the queue (encoded or kept verbatim)."""
        with self._changed:
            return self._changed.wait_for(lambda: ino not in self.store.pending() or self._stopping, timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self.store.pending() or self._stopping, timeout)

    def _run(self) -> None:
        while not self._stopping:
            batch = self.store.pending(self.batch_size)
            if not batch:
                self._wake.wait(timeout=5)
                self._wake.clear()
                continue
            self.deferred = 0
            try:
                self._encode(batch)
            except Exception:  # never let the thread die: log, back off, retry later
                log.exception("encoding batch %s failed; will retry", batch)
                self._wake.wait(timeout=30)
            if self.deferred:  # open files: wait for a close (release notifies) before retrying
                self._wake.wait(timeout=5)
                self._wake.clear()
            with self._changed:
                self._changed.notify_all()

    def state(self) -> dict:
        return {"running": self._thread.is_alive(), "finished": dict(self.finished), "deferred_open_files": self.deferred}

    def remember_name(self, ino: int, path: str) -> None:
        """The path a file was written under, so log lines can name it."""
        self._names[ino] = path

    def _encode(self, batch: list[int]) -> None:
        inodes = [self.store.inode(ino) for ino in batch]
        live = [inode for inode in inodes if inode is not None]
        datas = [self.store.read_raw(inode.ino) for inode in live]
        results = self.codec.encode_many(datas)
        for inode, data, result in zip(live, datas, results):
            self._finish(inode, judge(data, result), len(data))
        for ino in set(batch) - {inode.ino for inode in live}:
            self.store.finish_encode(ino, -1, None)  # vanished: just dequeue
            self._names.pop(ino, None)

    def _finish(self, inode, outcome, original_length: int) -> None:
        guard = self.open_files() if self.open_files else _NoneOpen()
        with guard as is_open:
            if is_open(inode.ino):
                self.deferred += 1  # a handle still reads the staged bytes: retry after it closes
                return
            # the decision is visible as user.sdfs.verdict (invariant 4)
            if self.store.finish_encode(inode.ino, inode.generation, outcome.record, outcome.output_length,
                                        notes=outcome.notes(original_length)):
                # logged once, when it takes effect (not at every retry of a deferred file)
                name = self._names.get(inode.ino) or f"inode {inode.ino}"
                log.log(outcome.log_level, "%s: %s", name, outcome.verdict)
            self._names.pop(inode.ino, None)
            self.finished[outcome.verdict.split(":", 1)[0]] += 1


class _NoneOpen:
    def __enter__(self):
        return lambda ino: False

    def __exit__(self, *exc):
        return False
