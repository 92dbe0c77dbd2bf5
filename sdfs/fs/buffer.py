"""A file's bytes while it is being changed: in memory while small, then in an
unnamed temporary file in the store's tmp/ folder.

Every method either completes or leaves the buffer exactly as it was and
raises OSError (ENOSPC on a full disk): bytes that write() accepted are never
dropped by a later failure. (tempfile.SpooledTemporaryFile loses its data
when the roll-over to disk fails, and is then unusable.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class WriteBuffer:
    def __init__(self, spill_dir: Path, in_memory: int):
        self._spill_dir = spill_dir
        self._in_memory = in_memory
        self._memory: bytearray | None = bytearray()
        self._file = None  # once spilled
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, size: int) -> bytes:
        end = min(self._size, offset + size)
        if offset >= end:
            return b""
        if self._memory is not None:
            return bytes(self._memory[offset:end])
        return os.pread(self._file.fileno(), end - offset, offset)

    def write(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if self._memory is not None and end > self._in_memory:
            self._spill()
        if self._memory is not None:
            if offset > self._size:
                self._memory.extend(bytes(offset - self._size))  # a hole reads as zeros
            self._memory[offset:end] = data
        else:
            fd = self._file.fileno()
            try:
                written = os.pwrite(fd, data, offset)  # a hole past the end stays sparse
                if written != len(data):
                    raise OSError(28, os.strerror(28))  # a short write: the disk is full
            except OSError:
                os.ftruncate(fd, self._size)  # give back what a partial write took
                raise
        self._size = max(self._size, end)

    def truncate(self, length: int) -> None:
        if self._memory is not None and length > self._in_memory:
            self._spill()
        if self._memory is not None:
            if length < self._size:
                del self._memory[length:]
            else:
                self._memory.extend(bytes(length - self._size))
        else:
            os.ftruncate(self._file.fileno(), length)
        self._size = length

    def _spill(self) -> None:
        spilled = tempfile.TemporaryFile(dir=self._spill_dir)
        try:
            with memoryview(self._memory) as view:  # released at once: a held view would pin the bytearray
                done = 0
                while done < len(view):
                    done += os.write(spilled.fileno(), view[done:])
        except OSError:
            spilled.close()  # the bytes in memory are untouched
            raise
        self._file, self._memory = spilled, None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._memory = None
