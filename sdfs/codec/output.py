"""Reconstructions written back as files whose byte length was fixed at encode time.

The filesystem reports ``st_size`` before it decodes, and a later decode (on
another device, in another dtype, with another zlib) can differ from the one
made at encode time by a level here and there.  So :func:`plan_output` picks a
coding and a length once, with headroom, and :func:`render_output` always hits
that length exactly, whatever the pixels:

* ``png-deflate``: a normal compressed PNG (filters chosen per row as libpng
  does, zlib level 6), padded with an ancillary ``sdPd`` chunk.  A decode that
  compresses larger than its room is written with its colour samples' low bits
  cleared, one more bit at a time, until it fits.
* ``png-stored``: stored (uncompressed) deflate blocks, whose length is pure
  arithmetic.  The fallback when compression would not save anything, and the
  only PNG coding of format version 1 records.
* ``jpeg``: the source's tables, padded with COM segments; a decode that does
  not fit is encoded again a notch coarser.

docs/FORMAT.md section 3 describes each byte.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from PIL.JpegPresets import presets as _JPEG_PRESETS

from sdfs.errors import OutputEncodingError

from .images import CHANNELS, JPEG_APP_MARKERS, JPEG_COM, PNG_SIGNATURE, OutputSpec

PNG_DEFLATE, PNG_STORED, JPEG = "png-deflate", "png-stored", "jpeg"
CODINGS = {"PNG": (PNG_DEFLATE, PNG_STORED), "JPEG": (JPEG,)}

_MIN_HEADROOM = 64
_HEADROOM_DIVISOR = 50  # 2 % of the natural size


@dataclass(frozen=True)
class OutputPlan:
    """What encoding fixed for every later output of one image."""

    coding: str  # one of CODINGS[spec.format]
    length: int  # bytes


def headroom(natural: int) -> int:
    """Room left above the encode-time length for later decodes that differ."""
    return max(_MIN_HEADROOM, natural // _HEADROOM_DIVISOR)


def plan_output(spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None) -> tuple[OutputPlan, bytes]:
    """At encode time: the plan every later :func:`render_output` of this
    image must follow, and the output of these very planes under it (so the
    encoder compresses once, and what it measures is what it planned)."""
    pixels, alpha = _check_planes(spec, pixels, alpha)
    if spec.format == "JPEG":
        head, body = _jpeg_head(spec), _jpeg_body(spec, pixels, _base_qtables(spec))
        natural = len(head) + len(body)
        length = natural + headroom(natural)
        return OutputPlan(JPEG, length), b"".join([head, *_com_padding(length - natural), body])
    idat = _deflate_idat(spec, pixels, alpha, cleared_bits=0)
    natural = _png_frame_length(spec) + _length_of(idat)
    length = natural + headroom(natural)
    stored = _stored_png_length(spec)
    if length >= stored:  # compression does not pay for its headroom (noise, tiny images)
        return OutputPlan(PNG_STORED, stored), _render_stored_png(spec, pixels, alpha, stored)
    return OutputPlan(PNG_DEFLATE, length), _assemble_png(spec, idat, length - natural)


def render_output(spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None, plan: OutputPlan) -> bytes:
    """Encode the planes as a valid file of exactly ``plan.length`` bytes.

    Raises OutputEncodingError if that is impossible: planes that do not
    match the spec, a coding that is not the spec's format's, a stored PNG of
    another length, or an output that will not fit even at its coarsest.
    """
    pixels, alpha = _check_planes(spec, pixels, alpha)
    if plan.coding not in CODINGS.get(spec.format, ()):
        raise OutputEncodingError(f"a {spec.format} image cannot be written as {plan.coding}")
    if plan.coding == PNG_DEFLATE:
        out = _render_deflate_png(spec, pixels, alpha, plan.length)
    elif plan.coding == PNG_STORED:
        out = _render_stored_png(spec, pixels, alpha, plan.length)
    else:
        out = _render_jpeg(spec, pixels, plan.length)
    if len(out) != plan.length:  # guards the length arithmetic; cheap
        raise OutputEncodingError(f"internal error: encoded {len(out)} bytes, not {plan.length}")
    return out


def _check_planes(
    spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate planes against the spec; return them as uint8 arrays."""
    formats = {"PNG": ("L", "RGB", "LA", "RGBA"), "JPEG": ("L", "RGB")}
    if spec.mode not in formats.get(spec.format, ()):
        raise OutputEncodingError(f"cannot write a {spec.format} image in mode {spec.mode}")
    pixels = np.asarray(pixels)
    colour = 1 if spec.mode in ("L", "LA") else 3
    if pixels.dtype != np.uint8 or pixels.shape != (spec.height, spec.width, colour):
        raise OutputEncodingError(
            f"pixels must be uint8 {(spec.height, spec.width, colour)}, "
            f"got {pixels.dtype} {pixels.shape}"
        )
    wants_alpha = spec.mode.endswith("A")
    if wants_alpha != (alpha is not None):
        raise OutputEncodingError(f"mode {spec.mode} {'needs' if wants_alpha else 'has no'} alpha")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != (spec.height, spec.width):
            raise OutputEncodingError(
                f"alpha must be uint8 {(spec.height, spec.width)}, got {alpha.dtype} {alpha.shape}"
            )
    return pixels, alpha


# ---- PNG: the frame both codings share ----------------------------------------

_IDAT_MAX = 1 << 20  # IDAT payload size; any value works, this keeps chunks modest
_CHUNK_FRAME = 12  # length, type and CRC around every chunk's payload
_PAD_CHUNK = b"sdPd"  # ancillary, private, safe to copy: viewers skip it


def _png_frame_length(spec: OutputSpec) -> int:
    """Signature, IHDR, metadata and IEND: everything but the IDATs and padding."""
    return len(PNG_SIGNATURE) + _CHUNK_FRAME + 13 + len(spec.metadata) + _CHUNK_FRAME


def _assemble_png(spec: OutputSpec, idat: list, pad: int) -> bytes:
    """The file: signature, IHDR, metadata, IDATs, ``pad`` bytes of padding
    (0, or a whole sdPd chunk of at least 12), IEND."""
    colour_type = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}[spec.mode]
    ihdr = struct.pack(">IIBBBBB", spec.width, spec.height, 8, colour_type, 0, 0, 0)
    pieces = [PNG_SIGNATURE, *_png_chunk(b"IHDR", ihdr), spec.metadata, *idat]
    if pad:
        pieces += _png_chunk(_PAD_CHUNK, bytes(pad - _CHUNK_FRAME))
    pieces += _png_chunk(b"IEND", b"")
    return b"".join(pieces)


def _idat_chunks(stream) -> list:
    stream = memoryview(stream)
    pieces: list = []
    for start in range(0, len(stream), _IDAT_MAX):
        pieces += _png_chunk(b"IDAT", stream[start : start + _IDAT_MAX])
    return pieces


def _length_of(pieces: list) -> int:
    return sum(len(piece) for piece in pieces)


def _png_chunk(ctype: bytes, payload) -> list:
    """A chunk as pieces (header, payload, CRC) so callers join once."""
    crc = zlib.crc32(payload, zlib.crc32(ctype))
    return [struct.pack(">I", len(payload)) + ctype, payload, struct.pack(">I", crc)]


def _samples(pixels: np.ndarray, alpha: np.ndarray | None, rows: slice, keep_mask: int) -> np.ndarray:
    """Rows of interleaved 8-bit samples (colour, then alpha) as a (h, width * channels) array."""
    colour = pixels[rows] if keep_mask == 0xFF else pixels[rows] & np.uint8(keep_mask)
    if alpha is not None:
        colour = np.concatenate([colour, alpha[rows][:, :, None]], axis=2)
    return colour.reshape(colour.shape[0], -1)


# ---- PNG: compressed, padded to its planned length -----------------------------

_ZLIB_LEVEL = 6  # libpng's default: most of level 9's gain at two thirds of its time
_STRIP_SAMPLES = 1 << 18  # filtered in strips: ~10 MB of temporaries, whatever the image


def _render_deflate_png(spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None, length: int) -> bytes:
    """Padded to ``length``; when the compressed image is too long for that
    (or leaves 1 to 11 bytes, less than an empty chunk), the colour samples'
    lowest bit is cleared, then two, ... : deterministic, never a level more
    than the bits cleared, and each bit shortens a photo by about a tenth.
    Alpha is never touched: it is stored exactly."""
    frame = _png_frame_length(spec)
    for cleared_bits in range(9):
        idat = _deflate_idat(spec, pixels, alpha, cleared_bits)
        pad = length - frame - _length_of(idat)
        if pad == 0 or pad >= _CHUNK_FRAME:
            return _assemble_png(spec, idat, pad)
    raise OutputEncodingError(f"the PNG reconstruction does not fit its recorded {length} bytes")


def _deflate_idat(spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None, cleared_bits: int) -> list:
    """IDAT chunks of the filtered rows, zlib-compressed strip by strip."""
    channels = CHANNELS[spec.mode]
    row_samples = spec.width * channels
    keep_mask = (0xFF << cleared_bits) & 0xFF
    compressor = zlib.compressobj(_ZLIB_LEVEL, zlib.DEFLATED, 15, 9)
    stream = []
    previous = np.zeros((1, row_samples), np.uint8)
    step = max(1, _STRIP_SAMPLES // row_samples)
    for start in range(0, spec.height, step):
        rows = _samples(pixels, alpha, slice(start, start + step), keep_mask)
        stream.append(compressor.compress(_filter_rows(previous, rows, channels)))
        previous = rows[-1:]
    stream.append(compressor.flush())
    return _idat_chunks(b"".join(stream))


def _filter_rows(previous: np.ndarray, rows: np.ndarray, bpp: int) -> np.ndarray:
    """Each row as its filter type byte then the filtered bytes, the type
    chosen as libpng does: the least sum of the bytes read as signed values.
    ``previous`` is the row above the first (zeros for the image's first)."""
    x = rows.astype(np.int16)
    up = np.concatenate([previous, rows[:-1]]).astype(np.int16)
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    upleft = np.zeros_like(x)
    upleft[:, bpp:] = up[:, :-bpp]
    estimate = left + up - upleft
    to_left, to_up, to_upleft = np.abs(estimate - left), np.abs(estimate - up), np.abs(estimate - upleft)
    paeth = np.where((to_left <= to_up) & (to_left <= to_upleft), left, np.where(to_up <= to_upleft, up, upleft))
    # None, Sub, Up, Average, Paeth (PNG filter types 0-4), each mod 256
    filtered = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(np.uint8)
    cost = np.abs(filtered.view(np.int8).astype(np.int16)).sum(axis=2, dtype=np.int64)
    best = cost.argmin(axis=0)  # ties go to the lower type, as in libpng
    out = np.empty((rows.shape[0], 1 + rows.shape[1]), np.uint8)
    out[:, 0] = best
    out[:, 1:] = filtered[best, np.arange(rows.shape[0])]
    return out


# ---- PNG: stored deflate, so the length is pure arithmetic ---------------------

_STORED_MAX = 65535  # largest stored deflate block
_ZLIB_STORED_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest"


def _stored_png_length(spec: OutputSpec) -> int:
    raw = spec.height * (1 + spec.width * CHANNELS[spec.mode])
    stream = len(_ZLIB_STORED_HEADER) + raw + 5 * _ceil_div(raw, _STORED_MAX) + 4
    idat_frames = _CHUNK_FRAME * _ceil_div(stream, _IDAT_MAX)
    return _png_frame_length(spec) + stream + idat_frames


def _render_stored_png(spec: OutputSpec, pixels: np.ndarray, alpha: np.ndarray | None, length: int) -> bytes:
    expected = _stored_png_length(spec)
    if length != expected:
        raise OutputEncodingError(
            f"this uncompressed PNG always encodes to {expected} bytes, but {length} were recorded"
        )
    rows = np.empty((spec.height, 1 + spec.width * CHANNELS[spec.mode]), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = _samples(pixels, alpha, slice(None), 0xFF)
    return _assemble_png(spec, _idat_chunks(_stored_zlib(memoryview(rows.reshape(-1)))), 0)


def _stored_zlib(raw: memoryview) -> bytes:
    """A zlib stream of stored blocks, written by hand so its size is fixed
    (zlib.compress(level=0) splits blocks as an implementation detail)."""
    pieces = [_ZLIB_STORED_HEADER]
    for start in range(0, len(raw), _STORED_MAX):
        block = raw[start : start + _STORED_MAX]
        final = start + _STORED_MAX >= len(raw)
        pieces += (struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF), block)
    pieces.append(struct.pack(">I", zlib.adler32(raw)))
    return b"".join(pieces)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# ---- JPEG: natural encode plus COM padding -------------------------------------

_JPEG_MAX_NOTCHES = 20  # 1.1 ** 20 ~ 6.7x coarser tables at worst
_COM_MIN, _COM_MAX = 4, 4 + 65533  # segment bytes: FF FE, length, payload
_PAD_TAG = b"sdfs-pad"
# Tables for a JPEG spec that carries none (e.g. a lossless JPEG source).
_DEFAULT_QTABLES = _JPEG_PRESETS["web_very_high"]["quantization"]


def _render_jpeg(spec: OutputSpec, pixels: np.ndarray, length: int) -> bytes:
    head = _jpeg_head(spec)
    tables = _base_qtables(spec)
    for _ in range(_JPEG_MAX_NOTCHES + 1):
        body = _jpeg_body(spec, pixels, tables)
        pad = length - len(head) - len(body)
        if pad == 0 or pad >= _COM_MIN:
            return b"".join([head, *_com_padding(pad), body])
        coarser = _notch_lower(tables)  # too big, or 1..3 bytes short of a COM
        if all(np.array_equal(old, new) for old, new in zip(tables, coarser)):
            break  # already as coarse as baseline tables go
        tables = coarser
    raise OutputEncodingError(
        f"the JPEG reconstruction does not fit its recorded {length} bytes "
        "even at reduced quality"
    )


def _jpeg_head(spec: OutputSpec) -> bytes:
    return b"\xff\xd8" + spec.metadata


def _jpeg_body(spec: OutputSpec, pixels: np.ndarray, tables: list[np.ndarray]) -> bytes:
    """Pillow's sequential encoding from its first non-APPn/COM segment (DQT...)."""
    image = Image.fromarray(pixels[:, :, 0] if spec.mode == "L" else pixels)
    options = {"qtables": [t.tolist() for t in tables], "optimize": False, "progressive": False}
    if spec.mode == "RGB":
        options["subsampling"] = spec.jpeg_subsampling if spec.jpeg_subsampling in (0, 1, 2) else 2
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    encoded = buffer.getvalue()
    pos = 2  # after SOI; skip Pillow's JFIF (and any other) header segments
    while encoded[pos + 1] in JPEG_APP_MARKERS or encoded[pos + 1] == JPEG_COM:
        pos += 2 + ((encoded[pos + 2] << 8) | encoded[pos + 3])
    return encoded[pos:]


def _base_qtables(spec: OutputSpec) -> list[np.ndarray]:
    if not spec.jpeg_qtables:
        return [np.asarray(t, np.int64) for t in _DEFAULT_QTABLES]
    tables = []
    for packed in spec.jpeg_qtables:
        if len(packed) not in (64, 128):
            raise OutputEncodingError("JPEG spec holds a malformed quantization table")
        dtype = np.uint8 if len(packed) == 64 else ">u2"
        tables.append(np.frombuffer(packed, dtype).astype(np.int64))
    return tables


def _notch_lower(tables: list[np.ndarray]) -> list[np.ndarray]:
    """Coarser tables: each entry x1.1 rounded up (integer maths: no 11.000001),
    capped at 255 to stay baseline, but never below its current value (a
    16-bit table's entries above 255 must not get finer)."""
    return [np.clip((t * 11 + 9) // 10, 1, np.maximum(t, 255)) for t in tables]


def _com_padding(pad: int) -> list[bytes]:
    """``pad`` bytes (0 or >= 4) of COM segments, split evenly below 64 KiB each."""
    if pad == 0:
        return []
    count = _ceil_div(pad, _COM_MAX)
    sizes = [pad // count + (i < pad % count) for i in range(count)]
    filler = _PAD_TAG + bytes(_COM_MAX)
    return [b"\xff\xfe" + struct.pack(">H", n - 2) + filler[: n - 4] for n in sizes]
