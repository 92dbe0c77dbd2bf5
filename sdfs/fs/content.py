"""An open file's bytes while they are being changed, in memory that does not
grow with the file.

The file is seen as chunks (store.CHUNK bytes). A chunk being changed is held
in memory; once more than ``budget`` bytes of them are, all but the one
touched last are uploaded to the store as the next version of the file,
which nobody reads until commit() makes it the file's content in one small
transaction (Store.upload / Store.commit_content). An upload runs on the
``uploader`` thread while the writer goes on filling the next batch (LMDB's
copy and write, and the disk's flush, run without the GIL), with one batch in
flight at most, so a writer holds at most two budgets; its chunks are read
from memory until it has landed. Every other chunk is read
where it is: from the file's committed chunks in the store, or from a local
copy (``local``) when the store no longer holds them as chunks (a latent
file's reconstruction, or the original bytes an open file keeps after the
encoder replaced them). Bytes past what was written are zeros, and a hole
costs nothing in memory or in the store.

Not thread-safe: the caller holds the file's lock.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from concurrent.futures import Executor, Future

from ..store import CHUNK, MAX_FILE_SIZE, Store
from .buffer import WriteBuffer

UPLOAD_OVER = 8 << 20  # bytes of changed chunks held in memory per file before some go to the store


class FileContent:
    def __init__(self, store: Store, ino: int, size: int, generation: int, local: WriteBuffer | None = None,
                 budget: int = UPLOAD_OVER, uploader: Executor | None = None):
        """``size`` and ``generation``: the file as committed (or as ``local`` holds it)."""
        self.store, self.ino = store, ino
        self.size = size
        self.version = generation + 1  # what the next commit makes the file's generation
        self.base_end = size  # bytes of the original content still valid (a truncate lowers it)
        self.local = local  # the original content, when the store does not hold it as chunks
        self.budget = budget
        self.dirty: OrderedDict[int, bytearray | bytes] = OrderedDict()  # changed chunks, least recently written first
        self.uploaded: set[int] = set()  # chunks changed and uploaded as ``version``
        self.uploader = uploader  # None: uploads run in the caller
        self.flying: dict[int, bytes] = {}  # the chunks of the upload in flight
        self._landing: Future | None = None
        self.changed = False  # holds changes the store has not committed

    # -- reading

    def read(self, offset: int, size: int) -> bytes:
        end = min(self.size, offset + size)
        if end <= offset:
            return b""
        out = bytearray(end - offset)  # zeros where nothing was written
        for index in range(offset // CHUNK, -(-end // CHUNK)):
            start = index * CHUNK
            lo, hi = max(offset, start) - start, min(end, start + CHUNK) - start
            data = self._chunk_bytes(index, lo, hi)
            out[start + lo - offset : start + lo - offset + len(data)] = data
        return bytes(out)

    def _chunk_bytes(self, index: int, lo: int, hi: int) -> bytes:
        """Bytes ``lo:hi`` of chunk ``index`` as they are now; shorter where the rest is zeros."""
        chunk = self.dirty.get(index)
        if chunk is None:
            chunk = self.flying.get(index)
        if chunk is not None:
            return bytes(chunk[lo:hi])
        if index in self.uploaded:
            return self.store.read_upload(self.ino, index, self.version, lo, hi)
        start = index * CHUNK
        hi = min(hi, self.base_end - start)  # the original content past a truncate is gone
        if hi <= lo:
            return b""
        if self.local is not None:
            return self.local.read(start + lo, hi - lo)
        return self.store.read_raw(self.ino, start + lo, hi - lo)

    # -- changing

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > MAX_FILE_SIZE:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        done = 0
        with memoryview(data) as view:
            while done < len(data):
                index, lo = divmod(offset + done, CHUNK)
                n = min(CHUNK - lo, len(data) - done)
                if lo == 0 and n == CHUNK and len(data) == CHUNK:  # a whole chunk (what dd bs=1M sends)
                    self.dirty[index] = bytes(data)  # kept as it came: bytes, copied only if changed in part later
                    self.dirty.move_to_end(index)
                    break
                chunk = self._changing(index, whole=lo == 0 and n == CHUNK)
                if len(chunk) < lo:
                    chunk.extend(bytes(lo - len(chunk)))
                chunk[lo : lo + n] = view[done : done + n]
                done += n
        self.size = max(self.size, end)
        self.changed = True
        self._upload_over_budget()

    def truncate(self, length: int) -> None:
        if length > MAX_FILE_SIZE:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        self._land()
        if length < self.size:
            count = -(-length // CHUNK)
            for index in [i for i in self.dirty if i >= count]:
                del self.dirty[index]
            self.uploaded = {i for i in self.uploaded if i < count}
            index, keep = divmod(length, CHUNK)
            if keep:  # the chunk the new end falls in loses its tail
                chunk = self._changing(index, whole=False)
                del chunk[keep:]
            self.base_end = min(self.base_end, length)
        self.size = length  # growing leaves a hole: nothing is allocated
        self.changed = True

    def _changing(self, index: int, whole: bool) -> bytearray:
        """The in-memory copy of chunk ``index``, made from its current bytes
        unless the caller is about to overwrite all of it."""
        chunk = self.dirty.get(index)
        if chunk is None:
            chunk = bytearray() if whole else bytearray(self._chunk_bytes(index, 0, CHUNK))
            self.dirty[index] = chunk
        elif not isinstance(chunk, bytearray):  # a whole chunk kept as written: now changed in part
            chunk = self.dirty[index] = bytearray(chunk)
        self.dirty.move_to_end(index)
        return chunk

    def _upload_over_budget(self) -> None:
        if len(self.dirty) * CHUNK <= self.budget:
            return
        self._land()  # one batch in flight at most
        last = next(reversed(self.dirty))  # likely to be written again (an append)
        pieces = {i: bytes(c) for i, c in self.dirty.items() if i != last}
        for index in pieces:
            del self.dirty[index]
        self.flying = pieces
        if self.uploader is not None:
            self._landing = self.uploader.submit(self.store.upload, self.ino, self.version, pieces)
        else:
            self._landing = Future()
            try:
                self._landing.set_result(self.store.upload(self.ino, self.version, pieces))
            except Exception as error:
                self._landing.set_exception(error)
            self._land()

    def _land(self) -> None:
        """Wait for the upload in flight; its chunks are then read from the
        store. One that failed (a full disk) puts its chunks back in memory,
        where a newer write of the same chunk does not already stand, and
        raises: the next upload or the commit tries again."""
        landing, self._landing = self._landing, None
        if landing is None:
            return
        flying, self.flying = self.flying, {}
        try:
            landing.result()
        except BaseException:
            for index, chunk in flying.items():
                if index not in self.dirty:
                    self.dirty[index] = chunk
                    self.dirty.move_to_end(index, last=False)  # least recently written
            raise
        self.uploaded.update(flying)

    # -- committing

    def commit(self, queue: bool, mtime_ns: int | None, notes, ctime_ns: int | None = None) -> None:
        """Make this the file's content, durably, in one transaction. On
        failure nothing changes here, so a later commit can try again."""
        self._land()
        if self.local is not None:  # the store lacks the original bytes as chunks: they must go in too
            keep_below = 0
            for index in range(-(-min(self.base_end, self.size) // CHUNK)):
                if index not in self.dirty and index not in self.uploaded:
                    self._changing(index, whole=False)
                    self._upload_over_budget()
            self._land()  # its chunks must count as uploaded below
        else:
            keep_below = -(-self.base_end // CHUNK)
        pieces = {i: bytes(c) for i, c in self.dirty.items()}
        self.store.commit_content(self.ino, self.version, self.size, pieces, self.uploaded, keep_below,
                                  queue=queue, mtime_ns=mtime_ns, notes=notes, ctime_ns=ctime_ns)
        self.changed = False

    def close(self) -> None:
        try:
            self._land()  # never leave an upload running behind a file given up
        except Exception:  # the changes are being dropped (their commit failed): so is this error
            pass
        if self.local is not None:
            self.local.close()
        self.dirty.clear()
