"""Background encoder: turns pending (staged raw) files into latent records.
Staged bytes are durable before a file is queued, so a crash at any point
loses nothing: the next mount resumes the queue.

Two lanes, two threads: images big enough to be encoded in tiles go to their
own lane, one at a time, and everything else to the files lane, so a huge
photo never holds up the small files behind it. The lanes share the model one
forward pass at a time, taking turns (a big image's tiles alternate with
small files' passes). In each lane: files someone fsync()s first, then the
queue in inode order, leaving out files a writer is still changing. The
encoder's VAE work runs at background priority, so a reader's decode never
waits behind a batch: at most behind the one forward pass in progress.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter

from ..codec import images
from ..errors import NotACandidate
from ..ingest import judge
from ..store import Store

log = logging.getLogger(__name__)

RETRY_AFTER_S = 30  # a file whose encode or commit failed is tried again after this
FILES, BIG = "files", "big images"  # the lanes
# a candidate whose header lies beyond its first 64 KiB (a JPEG behind large
# metadata) counts as big above this size: about a 16-megapixel photo
BIG_UNKNOWN_BYTES = 8 << 20


class Encoder:
    def __init__(self, store: Store, codec, batch_size: int | None = None):
        self.store = store
        self.codec = codec
        # one file a pass on a CPU (batching buys nothing there, and a long
        # batch delays fsync), several on a GPU
        self.batch_size = batch_size or codec.vae.batch_size
        self._swap_guard = lambda ino, generation: contextlib.nullcontext()
        self._busy = frozenset
        self._wakes = {FILES: threading.Event(), BIG: threading.Event()}  # one a lane: each clears its own
        self._changed = threading.Condition()
        self._stopping = False
        self._commit_gate = threading.Lock()  # held by each commit; stop() takes it to end them
        # each lane's batch in hand: when it started, its inodes, how far its
        # tiled passes are; replaced whole, never changed, so a reader sees one state
        self._in_hand: dict[str, dict | None] = {FILES: None, BIG: None}
        self._paths_memo: dict[float, dict] = {}  # a batch's start -> paths of its files (_paths)
        self._names: dict[int, str] = {}
        self._urgent: dict[int, None] = {}  # fsync()ed files, in order of asking
        self._big: dict[int, None] = {}  # files the files lane handed to the big-image lane, in order
        self._retry_after: dict[int, float] = {}
        self.finished = Counter()  # outcomes since start, by verdict prefix
        self._pace: float | None = None  # seconds a file, averaged over the batches done (sdfs sync's estimate)
        self._threads = [threading.Thread(target=self._run, args=(lane,), name=f"sdfs-encoder-{lane.split()[0]}",
                                          daemon=True) for lane in (FILES, BIG)]

    def attach(self, swap_guard, busy) -> None:
        """The filesystem's side: ``swap_guard(ino, generation)`` is held while
        a file's stored bytes are replaced (open handles keep theirs);
        ``busy()`` names the files whose writers hold unsaved changes."""
        self._swap_guard, self._busy = swap_guard, busy

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def notify(self) -> None:
        self._wake_all()

    def _wake_all(self) -> None:
        for wake in self._wakes.values():
            wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Take no more work, and commit nothing more: an encode in progress
        is abandoned (a commit in progress ends first). Its files, and all
        the others queued, stay queued, durably, for the next mount. Returns
        whether the thread has ended within ``timeout``; if not, it is still
        inside the model, and only reads the store until the process exits."""
        gated = self._commit_gate.acquire(timeout=-1 if timeout is None else timeout)
        self._stopping = True  # a commit in progress ends first; none starts after this
        if gated:
            self._commit_gate.release()
        self._wake_all()
        with self._changed:
            self._changed.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def in_hand(self) -> int:
        """Files of the batches being encoded now (abandoned by a stop)."""
        return sum(len(batch["inodes"]) for batch in self._in_hand.values() if batch)

    def wait_for(self, ino: int, timeout: float | None = None) -> bool:
        """Block until ``ino`` has left the queue (encoded or kept verbatim);
        it goes to the front of the queue."""
        with self._changed:
            self._urgent[ino] = None
        self._wake_all()
        with self._changed:
            return self._changed.wait_for(lambda: self._stopping or not self.store.is_pending(ino), timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._stopping or not self.store.pending_count(), timeout)

    def state(self) -> dict:
        """``encoding``: one entry a busy lane (its files, how long it has been
        at them, and how far a tiled pass is); ``batch_seconds``: how long the
        files lane's batch has run (with ``seconds_per_file``, that lane's
        pace, what `sdfs sync` estimates from)."""
        state = {"running": any(thread.is_alive() for thread in self._threads), "finished": dict(self.finished),
                 "deferred_open_files": len(self._busy()), "urgent": len(self._urgent)}
        batches = [(lane, batch) for lane, batch in self._in_hand.items() if batch is not None]
        if self._pace is not None:
            state["seconds_per_file"] = round(self._pace, 3)
        if batches:
            now = time.monotonic()
            files = dict(batches).get(FILES)  # the lane may finish meanwhile: read its state once
            if files is not None:
                state["batch_seconds"] = round(now - files["started"], 1)
            self._paths_memo = {start: paths for start, paths in self._paths_memo.items()
                                if any(batch["started"] == start for _, batch in batches)}
            state["encoding"] = [
                {"lane": lane, "seconds": round(now - batch["started"], 1),
                 **{key: value for key, value in batch.items() if key != "started"},
                 "files": [self._names.get(ino) or self._paths(batch).get(ino) or f"inode {ino}"
                           for ino in batch["inodes"]]}
                for lane, batch in batches
            ]
        return state

    def _paths(self, batch: dict) -> dict[int, str | None]:
        """Paths of the batch's files whose names the encoder does not know (a
        queue resumed after a remount): one scan of the store's names, the
        first time someone asks (`sdfs sync`, `sdfs stats`), kept for the batch."""
        if batch["started"] not in self._paths_memo:
            self._paths_memo[batch["started"]] = self.store.paths_of(
                [ino for ino in batch["inodes"] if ino not in self._names])
        return self._paths_memo[batch["started"]]

    def remember_name(self, ino: int, path: str) -> None:
        """The path a file was written under, so log lines can name it."""
        self._names[ino] = path

    def renamed(self, ino: int, old: str, new: str, directory: bool) -> None:
        """Log lines name a file by where it is now (rsync writes a temp name, then renames)."""
        if ino in self._names:
            self._names[ino] = new
        if directory:
            for other, name in list(self._names.items()):
                if name.startswith(old + "/"):
                    self._names[other] = new + name[len(old) :]

    def screen(self, head: bytes, size: int):
        """The verdict (an Outcome) on content that cannot be an image, judged
        by its first HEAD_BYTES and its size; None for a candidate, which the
        VAE must see. The filesystem asks at close(), so a file that is no
        image is final in the commit that stores it and never waits in the queue."""
        try:
            images.screen(head, size, self.codec.max_pixels)
        except NotACandidate as reason:
            return judge(head, reason, length=size)
        return None

    def settled(self, ino: int, outcome, path: str | None = None) -> None:
        """Log and count a verdict stored without the queue (see screen())."""
        log.log(outcome.log_level, "%s: %s", path or self._name(ino), outcome.verdict)
        self._names.pop(ino, None)
        with self._changed:  # called from the encoder and from FUSE threads
            self.finished[outcome.verdict.split(":", 1)[0]] += 1
            self._changed.notify_all()  # an fsync() waiting for this file returns now

    # -- the thread

    def _tile_done(self, lane: str, pass_name: str, done: int, total: int) -> None:
        batch = self._in_hand[lane]
        if batch is not None:
            self._in_hand[lane] = {**batch, "pass": pass_name, "tiles_done": done, "tiles": total}

    def _run(self, lane: str) -> None:
        from ..codec.vae import reporting_tiles

        with self.codec.vae.background_work(), reporting_tiles(lambda *done: self._tile_done(lane, *done)):
            while not self._stopping:
                wake = self._wakes[lane]
                wake.clear()  # before looking: a notify from now on is not lost
                try:
                    batch = self._next_batch(lane)
                    if batch and not self._stopping:
                        started = time.monotonic()
                        self._in_hand[lane] = {"started": started, "inodes": list(batch)}
                        try:
                            self._encode(batch, lane)
                        finally:
                            encoded = len(self._in_hand[lane]["inodes"])  # less the files handed to the big lane
                            if lane == FILES and encoded:  # the pace of the queue: big images run beside it
                                per_file = (time.monotonic() - started) / encoded
                                self._pace = per_file if self._pace is None else (self._pace + per_file) / 2
                            self._in_hand[lane] = None
                        continue
                except Exception as error:  # never let the thread die: say so, back off, go on
                    log.error("the encoder failed (%s); trying again in %d s", error, RETRY_AFTER_S)
                    log.debug("encoder failure", exc_info=True)
                    wake.wait(timeout=RETRY_AFTER_S)
                    continue
                wake.wait(timeout=5)

    def _next_batch(self, lane: str) -> list[int]:
        now = time.monotonic()
        for ino, at in list(self._retry_after.items()):  # expired entries go: the table never outgrows the failures in hand
            if at <= now:
                self._retry_after.pop(ino, None)  # the other lane may have taken it out first
        held = self._busy() | set(self._retry_after)
        if lane == BIG:
            for ino in [*self._urgent, *self._big]:
                if ino not in self._big:
                    continue
                if not self.store.is_pending(ino):  # settled or gone meanwhile
                    self._big.pop(ino, None)
                elif ino not in held:
                    return [ino]
            return []
        held |= set(self._big)
        batch = []
        with self._changed:
            urgent = list(self._urgent)
        for ino in urgent:
            if not self.store.is_pending(ino):  # settled meanwhile (a close, a truncate to 0)
                with self._changed:
                    self._urgent.pop(ino, None)
                    self._changed.notify_all()
            elif ino not in held and len(batch) < self.batch_size:
                batch.append(ino)
        if len(batch) < self.batch_size:
            chosen = set(batch)
            batch += self.store.pending(self.batch_size - len(batch), skip=lambda ino: ino in held or ino in chosen)
        return batch

    def _needs_tiles(self, head: bytes, size: int) -> bool:
        """Whether an image is big enough to be encoded in tiles (judged by
        its header; one whose header lies beyond ``head`` by its size)."""
        dimensions = images.head_dimensions(head)
        if dimensions is None:
            return size > BIG_UNKNOWN_BYTES
        width, height = dimensions
        return self.codec.vae.tiling_for(height, width).enabled

    def _encode(self, batch: list[int], lane: str = FILES) -> None:
        inodes = [self.store.inode(ino) for ino in batch]
        live = [inode for inode in inodes if inode is not None]
        # judged by its first bytes and its size, a file that cannot be an
        # image is never read whole: a video of several GB costs one read of its head
        candidates, handed = [], set()
        for inode in live:
            head = self.store.read_raw(inode.ino, 0, images.HEAD_BYTES)
            outcome = self.screen(head, inode.size)
            if outcome is not None:
                self._finish(inode, outcome, inode.size)
            elif lane == FILES and self._needs_tiles(head, inode.size):
                handed.add(inode.ino)
                self._big[inode.ino] = None  # its own lane: the files behind it go on
                self._wakes[BIG].set()
            else:
                candidates.append(inode)
        if handed:  # the batch in hand is what this lane still encodes
            hand = self._in_hand[lane]
            self._in_hand[lane] = {**hand, "inodes": [ino for ino in hand["inodes"] if ino not in handed]}
        if candidates:
            self._encode_candidates(candidates)
        if lane == BIG:
            for inode in live:
                if inode.ino not in self._retry_after:
                    self._big.pop(inode.ino, None)
        for ino in set(batch) - {inode.ino for inode in live}:
            with self._commit_gate:
                if self._stopping:
                    break
                self.store.finish_encode(ino, -1, None)  # vanished: just dequeue
            self._names.pop(ino, None)
        with self._changed:
            self._changed.notify_all()

    def _encode_candidates(self, live: list) -> None:
        datas = [self.store.read_raw(inode.ino) for inode in live]
        try:
            results = self.codec.encode_many(datas)
        except Exception as error:  # e.g. out of memory: the files stay queued
            for inode in live:
                self._retry_after[inode.ino] = time.monotonic() + RETRY_AFTER_S
            log.error("encoding %s failed (%s); will retry in %d s",
                      ", ".join(self._name(i.ino) for i in live), error, RETRY_AFTER_S)
            log.debug("encode failure", exc_info=True)
            return
        for inode, data, result in zip(live, datas, results):
            self._finish(inode, judge(data, result), len(data))

    def _name(self, ino: int) -> str:
        return self._names.get(ino) or f"inode {ino}"

    def _finish(self, inode, outcome, original_length: int) -> None:
        # only a latent replaces the stored bytes: open handles need a copy of them then, not otherwise
        guard = self._swap_guard if outcome.record is not None else (lambda ino, generation: contextlib.nullcontext())
        try:
            with self._commit_gate:
                if self._stopping:  # stopped meanwhile: the file stays queued, for the next mount
                    return
                with guard(inode.ino, inode.generation):
                    # the decision is visible as user.sdfs.verdict (invariant 4)
                    taken = self.store.finish_encode(inode.ino, inode.generation, outcome.record,
                                                     outcome.output_length, notes=outcome.notes(original_length))
        except OSError as error:  # a full disk, say: the file stays queued as it is
            self._retry_after[inode.ino] = time.monotonic() + RETRY_AFTER_S
            log.warning("%s: cannot store its encoded form (%s); will retry in %d s",
                        self._name(inode.ino), error.strerror or error, RETRY_AFTER_S)
            return
        self._retry_after.pop(inode.ino, None)
        if taken:  # else the file changed meanwhile and is queued again
            self.settled(inode.ino, outcome)
        with self._changed:
            self._changed.notify_all()  # an fsync() of this file returns now
