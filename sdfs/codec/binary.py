"""Little-endian field writer and reader shared by the record and latent formats.

Every read checks bounds, so a truncated or corrupt record fails with a
RecordError naming the field, never with an IndexError or a garbage value.
"""

from __future__ import annotations

import struct

from ..errors import RecordError


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> "Writer":
        self._parts.append(bytes(data))
        return self

    def u8(self, value: int) -> "Writer":
        return self.raw(struct.pack("<B", value))

    def u16(self, value: int) -> "Writer":
        return self.raw(struct.pack("<H", value))

    def u32(self, value: int) -> "Writer":
        return self.raw(struct.pack("<I", value))

    def f32(self, value: float) -> "Writer":
        return self.raw(struct.pack("<f", value))

    def varint(self, value: int) -> "Writer":
        """Unsigned LEB128: small numbers (sizes, lengths) take one or two bytes."""
        if value < 0:
            raise ValueError("varint must be non-negative")
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return self.raw(bytes(out))

    def blob(self, data: bytes) -> "Writer":
        """A varint length followed by the bytes."""
        return self.varint(len(data)).raw(data)

    def text(self, value: str) -> "Writer":
        return self.blob(value.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes, what: str = "record") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._what = what

    @property
    def position(self) -> int:
        return self._pos

    def raw(self, size: int, field: str = "data") -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise RecordError(f"{self._what} is truncated: {field} needs {size} bytes at offset {self._pos}")
        chunk = bytes(self._data[self._pos : self._pos + size])
        self._pos += size
        return chunk

    def _unpack(self, fmt: str, field: str):
        return struct.unpack(fmt, self.raw(struct.calcsize(fmt), field))[0]

    def u8(self, field: str = "u8") -> int:
        return self._unpack("<B", field)

    def u16(self, field: str = "u16") -> int:
        return self._unpack("<H", field)

    def u32(self, field: str = "u32") -> int:
        return self._unpack("<I", field)

    def f32(self, field: str = "f32") -> float:
        return self._unpack("<f", field)

    def varint(self, field: str = "varint") -> int:
        value = shift = 0
        while True:
            byte = self.u8(field)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift >= 63:
                raise RecordError(f"{self._what} is corrupt: {field} is not a valid varint")

    def blob(self, field: str = "blob") -> bytes:
        return self.raw(self.varint(field), field)

    def text(self, field: str = "text") -> str:
        try:
            return self.blob(field).decode("utf-8")
        except UnicodeDecodeError as error:
            raise RecordError(f"{self._what} is corrupt: {field} is not UTF-8") from error

    def expect_end(self) -> None:
        if self._pos != len(self._data):
            raise RecordError(f"{self._what} has {len(self._data) - self._pos} unexpected trailing bytes")
