"""Safe decoding of input images.

:func:`probe` judges raw bytes by content and either returns a
:class:`SourceImage` (8-bit PNG or JPEG that can round-trip through latents) or
raises :class:`~sdfs.errors.NotACandidate` with a one-line reason.  It never
raises anything else, and it checks structure and header dimensions before
Pillow decodes a single pixel, so hostile input costs neither time nor memory.
:func:`screen` judges a file by its first bytes and size, before it is read
whole.  Writing reconstructions back as files is :mod:`sdfs.codec.output`'s job.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from sdfs.errors import NotACandidate

DEFAULT_MAX_PIXELS = 50_000_000

CHANNELS = {"L": 1, "RGB": 3, "LA": 2, "RGBA": 4}


@dataclass(frozen=True)
class OutputSpec:
    """Everything needed to re-create an output file of the same kind."""

    format: str  # "PNG" or "JPEG"
    mode: str  # "L", "RGB", "LA" or "RGBA" (JPEG: only L or RGB)
    width: int
    height: int
    metadata: bytes  # raw PNG chunks / JPEG segments, reinserted verbatim
    # JPEG only: source quantization tables in natural order, each 64 bytes
    # (all values <= 255) or 128 bytes of big-endian u16.
    jpeg_qtables: tuple[bytes, ...] = ()
    # JPEG only: Pillow's subsampling code (0=4:4:4, 1=4:2:2, 2=4:2:0), -1 unknown.
    jpeg_subsampling: int = -1


@dataclass(frozen=True)
class SourceImage:
    """A decoded latent candidate: colour planes plus an optional exact alpha."""

    spec: OutputSpec
    pixels: np.ndarray  # uint8 (H, W, C): C=1 for L/LA, C=3 for RGB/RGBA
    alpha: np.ndarray | None  # uint8 (H, W) for LA/RGBA, else None


# --------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> SourceImage:
    """Decode ``data`` if it is a latent candidate, else raise NotACandidate.

    The format is judged by content only.  Any failure, including whatever
    Pillow raises on hostile input (and warnings promoted to errors by ``-W
    error``), becomes NotACandidate: the caller then stores the bytes verbatim.
    The global warning filters are deliberately left alone, because changing
    them is not thread-safe and the filesystem probes from several threads.

    ``max_pixels`` is checked against the header before any pixel is decoded,
    and it is the only size limit: the PNG/JPEG plugins are used directly, so
    Pillow's ``MAX_IMAGE_PIXELS`` check (done in ``Image.open``) does not apply.
    """
    try:
        if not data:
            raise NotACandidate("empty file: there is no image to store as latents")
        if data.startswith(PNG_SIGNATURE):
            return _probe_png(data, max_pixels)
        if data.startswith(b"\xff\xd8\xff"):
            return _probe_jpeg(data, max_pixels)
        raise NotACandidate(_describe_other(data))
    except NotACandidate:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input can make Pillow raise anything
        raise NotACandidate(f"the image cannot be decoded ({_one_line(exc)})") from exc


# --------------------------------------------------------------------------
# screen: judge a file by its first bytes and size, before reading it whole
# --------------------------------------------------------------------------

HEAD_BYTES = 64 << 10  # what screen() is given: a file's first 64 KiB (or all of a smaller file)


def max_candidate_bytes(max_pixels: int) -> int:
    """A generous upper bound on the size of a PNG or JPEG of at most
    ``max_pixels`` pixels that sdfs takes. The pixels: an 8-bit RGBA PNG
    stored without compression needs 4 bytes a pixel plus a filter byte a
    row and a little framing, and a JPEG of noise at quality 100 stays under
    the same 4 bytes; 8 bytes a pixel leaves twice that (even 16-bit RGBA
    raw, which is no candidate, fits). The rest: metadata (ICC profiles,
    EXIF, XMP, text chunks) is not bound by the pixels, so 64 MiB more.
    A larger file cannot be a candidate, so it is never read whole to find out."""
    return 8 * max_pixels + (64 << 20)


def screen(head: bytes, size: int, max_pixels: int) -> None:
    """Raise NotACandidate for a file that cannot be a latent candidate,
    judged by ``head`` (its first HEAD_BYTES, or all of a smaller file) and
    ``size`` (its length): not PNG or JPEG by its first bytes, larger than
    any image of at most ``max_pixels`` pixels can be (max_candidate_bytes),
    or, where the header is inside ``head``, of more pixels than that.
    Returning means only "worth reading whole": probe() decides."""
    if not size or not head:
        raise NotACandidate("empty file: there is no image to store as latents")
    if head.startswith(PNG_SIGNATURE):
        kind = "PNG"
    elif head.startswith(b"\xff\xd8\xff"):
        kind = "JPEG"
    else:
        raise NotACandidate(_describe_other(head))
    limit = max_candidate_bytes(max_pixels)
    if size > limit:
        raise NotACandidate(
            f"{kind} file of {size} bytes is larger than an image of at most {max_pixels} pixels "
            f"can be ({limit} bytes)"
        )
    dimensions = head_dimensions(head)
    if dimensions is not None:
        _check_pixel_count(*dimensions, max_pixels)


def head_dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG or JPEG whose first bytes
    are ``head``, when the header lies inside them; otherwise None."""
    if head.startswith(PNG_SIGNATURE):
        return _png_head_dimensions(head)
    if head.startswith(b"\xff\xd8\xff"):
        return _jpeg_head_dimensions(head)
    return None


def _png_head_dimensions(head: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR (always its first chunk), if ``head`` holds it."""
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None  # probe() names what is wrong
    return struct.unpack_from(">II", head, 16)


def _jpeg_head_dimensions(head: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's frame header (SOF), if it lies inside
    ``head`` behind nothing but marker segments (APPn, COM, DQT, DHT...)."""
    pos = 2
    while True:
        match = _MARKER.match(head, pos)
        if match is None or pos + 4 > len(head):
            return None
        marker, pos = match[1][0], match.end()
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in _SOF_MARKERS:
            if pos + 7 > len(head):
                return None
            height, width = struct.unpack_from(">HH", head, pos + 3)  # length, precision, height, width
            return (width, height) if width and height else None
        if marker in (_SOS, _EOI, _SOI) or pos + 2 > len(head):
            return None
        pos += (head[pos] << 8) | head[pos + 1]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:120]


def _describe_other(data: bytes) -> str:
    """Name what the bytes look like, cheaply, for a helpful rejection."""
    kind = None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "WebP"
    elif data[4:8] == b"ftyp":
        brand = data[8:12]
        kind = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"mif1": "HEIF"}.get(
            brand, "ISO media (MP4/MOV/HEIF)"
        )
    else:
        for magic, name in _OTHER_SIGNATURES:
            if data.startswith(magic):
                kind = name
                break
    if kind is None:
        return "not a PNG or JPEG image (unrecognised content)"
    return f"{kind} data: only PNG and JPEG images are stored as latents"


_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"8BPS", "Photoshop"),
    (b"%PDF", "PDF"),
)


def _check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise NotACandidate(
            f"image is {width}x{height}, over the {max_pixels}-pixel limit for latents"
        )


def _split_alpha(samples: np.ndarray, has_alpha: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, C) samples -> contiguous colour planes and alpha (or None)."""
    if samples.ndim == 2:
        samples = samples[:, :, None]
    if not has_alpha:
        return np.ascontiguousarray(samples), None
    return np.ascontiguousarray(samples[:, :, :-1]), np.ascontiguousarray(samples[:, :, -1])


# ---- PNG -------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
_PNG_METADATA_CHUNKS = frozenset(
    {b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"cICP", b"sBIT", b"pHYs",
     b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf", b"bKGD"}
)  # fmt: skip
# Allowed bit depths per colour type (PNG spec, table 11.1).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Walking chunks costs a few microseconds each (here and again in Pillow);
# this bounds a file of millions of empty chunks to well under a second.  A
# 50-megapixel image in libpng's 8 KiB IDAT chunks needs about 25 000.
_PNG_MAX_CHUNKS = 1 << 16


@dataclass(frozen=True)
class _PngChunk:
    type: bytes
    start: int  # offset of the length field
    end: int  # offset just past the CRC

    def payload(self, data: bytes) -> bytes:
        return data[self.start + 8 : self.end - 4]


def _probe_png(data: bytes, max_pixels: int) -> SourceImage:
    chunks = _png_chunks(data)
    width, height, depth, colour = _png_header(chunks[0].payload(data))
    _check_png_chunk_kinds(chunks)
    _check_pixel_count(width, height, max_pixels)
    trns = next((c.payload(data) for c in chunks if c.type == b"tRNS"), None)
    # Constructing the plugin directly (not Image.open) skips sniffing other
    # formats: the signature already told us what this is.
    with PngImagePlugin.PngImageFile(io.BytesIO(data)) as im:
        im.load()
        if im.size != (width, height):
            raise NotACandidate("corrupt PNG: decoded size disagrees with its header")
        mode, pixels, alpha = _png_planes(im, colour, depth, trns)
    spec = OutputSpec("PNG", mode, width, height, _png_metadata(data, chunks, colour, depth, mode))
    return SourceImage(spec, pixels, alpha)


def _png_chunks(data: bytes) -> list[_PngChunk]:
    """Walk every chunk up to IEND, verifying each CRC and the file's end."""
    view = memoryview(data)
    chunks: list[_PngChunk] = []
    pos = len(PNG_SIGNATURE)
    while not chunks or chunks[-1].type != b"IEND":
        if len(chunks) >= _PNG_MAX_CHUNKS:
            raise NotACandidate("PNG has an implausible number of chunks")
        if pos + 12 > len(data):
            raise NotACandidate("truncated PNG: the file ends before its IEND chunk")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(data):
            raise NotACandidate("truncated PNG: the file ends inside a chunk")
        if not ctype.isalpha():
            raise NotACandidate("corrupt PNG: invalid chunk type")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise NotACandidate(f"corrupt PNG: CRC mismatch in chunk {ctype.decode()}")
        chunks.append(_PngChunk(ctype, pos, end))
        pos = end
    if pos != len(data):
        raise NotACandidate(
            f"{len(data) - pos} bytes follow the PNG end (IEND) and would be lost"
        )
    if chunks[0].type != b"IHDR":
        raise NotACandidate("corrupt PNG: the first chunk is not IHDR")
    return chunks


def _png_header(ihdr: bytes) -> tuple[int, int, int, int]:
    """Validate IHDR ourselves: Pillow silently reduces 16-bit RGB to 8 bits."""
    if len(ihdr) != 13:
        raise NotACandidate("corrupt PNG: malformed IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", ihdr
    )
    if (
        not (0 < width <= 0x7FFFFFFF and 0 < height <= 0x7FFFFFFF)
        or depth not in _PNG_DEPTHS.get(colour, ())
        or (compression, filtering) != (0, 0)
        or interlace not in (0, 1)
    ):
        raise NotACandidate("corrupt PNG: invalid IHDR values")
    if depth == 16:
        raise NotACandidate("16-bit PNG: only 8-bit images are stored as latents")
    return width, height, depth, colour


def _check_png_chunk_kinds(chunks: list[_PngChunk]) -> None:
    types = {c.type for c in chunks}
    if b"acTL" in types:
        raise NotACandidate("animated PNG (APNG): its frames would be lost")
    unknown = sorted(t for t in types if t[:1].isupper() and t not in _PNG_CRITICAL)
    if unknown:
        raise NotACandidate(f"PNG uses an unknown critical chunk {unknown[0].decode()}")
    if b"IDAT" not in types:
        raise NotACandidate("corrupt PNG: no image data (IDAT)")


def _png_planes(
    im: Image.Image, colour: int, depth: int, trns: bytes | None
) -> tuple[str, np.ndarray, np.ndarray | None]:
    """Pixels as 8-bit L/RGB planes; palette and tRNS become real alpha."""
    if colour == 3:
        has_alpha = trns is not None
        samples = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        pixels, alpha = _split_alpha(samples, has_alpha)
    else:
        samples = np.asarray(im.convert("L") if im.mode == "1" else im)
        pixels, alpha = _split_alpha(samples, colour in (4, 6))
        if colour in (0, 2) and trns is not None:
            alpha = _colour_key_alpha(pixels, trns, depth)
    base = "L" if pixels.shape[2] == 1 else "RGB"
    return (base if alpha is None else base + "A"), pixels, alpha


def _colour_key_alpha(pixels: np.ndarray, trns: bytes, depth: int) -> np.ndarray:
    """Alpha for a tRNS colour key: 0 where a pixel equals the key, else 255."""
    channels = pixels.shape[2]
    if len(trns) < 2 * channels:
        raise NotACandidate("corrupt PNG: tRNS chunk is too short")
    # The key is in the source's sample scale; the planes are 8-bit with
    # Pillow's bit replication (e.g. 2-bit 3 -> 255), so scale it the same way.
    scale = 255 // (2**depth - 1)
    key = np.array(struct.unpack(f">{channels}H", trns[: 2 * channels]), np.int64) * scale
    transparent = np.all(pixels == key, axis=2)
    return np.where(transparent, 0, 255).astype(np.uint8)


def _png_metadata(
    data: bytes, chunks: list[_PngChunk], colour: int, depth: int, mode: str
) -> bytes:
    """Whitelisted ancillary chunks, raw and in order, still valid for our output."""
    keep = set(_PNG_METADATA_CHUNKS)
    if colour == 3:
        keep -= {b"sBIT", b"bKGD"}  # both refer to the palette, which the output lacks
    if depth != 8:
        keep.discard(b"bKGD")  # its sample value is in the source's bit-depth scale
    kept = []
    for chunk in chunks:
        if chunk.type not in keep:
            continue
        # sBIT has one byte per channel; a tRNS key that became alpha adds one.
        if chunk.type == b"sBIT" and len(chunk.payload(data)) != CHANNELS[mode]:
            continue
        kept.append(data[chunk.start : chunk.end])
    return b"".join(kept)


# ---- JPEG ------------------------------------------------------------------

_SOI, _EOI, _SOS, _APP14 = 0xD8, 0xD9, 0xDA, 0xEE
JPEG_COM = 0xFE  # output.py skips these and APPn segments of Pillow's encodes
JPEG_APP_MARKERS = frozenset(range(0xE0, 0xF0))
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # minus DHT, JPG, DAC
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0..7
# A marker: fill bytes then a non-0xFF code.  Anchored use only (match).
_MARKER = re.compile(rb"\xff+([^\xff])")
# Next marker inside entropy-coded data: 0xFF not followed by stuffing (00),
# a restart code or another fill byte.  Linear: no repetition to backtrack.
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


@dataclass
class _JpegLayout:
    metadata: list[bytes]  # raw APPn/COM segments before the frame
    frame: bytes | None = None  # SOF payload
    multi_picture: bool = False  # APP2 "MPF": an MPO with more images after EOI
    end: int = 0  # offset just past EOI


def _probe_jpeg(data: bytes, max_pixels: int) -> SourceImage:
    layout = _walk_jpeg(data)
    if layout.multi_picture:
        raise NotACandidate("multi-picture JPEG (MPO): its extra images would be lost")
    if layout.end != len(data):
        raise NotACandidate(
            f"{len(data) - layout.end} bytes follow the JPEG end (EOI), e.g. a motion-photo "
            "video, and would be lost"
        )
    width, height = _check_jpeg_frame(layout.frame)
    _check_pixel_count(width, height, max_pixels)
    with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            raise NotACandidate(f"JPEG colour mode {im.mode} is not supported")
        if im.size != (width, height):
            raise NotACandidate("corrupt JPEG: decoded size disagrees with its header")
        pixels, _ = _split_alpha(np.asarray(im), has_alpha=False)
        qtables = tuple(_pack_qtable(im.quantization[k]) for k in sorted(im.quantization))
        spec = OutputSpec(
            "JPEG", im.mode, width, height, b"".join(layout.metadata),
            qtables, JpegImagePlugin.get_sampling(im),
        )  # fmt: skip
    return SourceImage(spec, pixels, None)


def _walk_jpeg(data: bytes) -> _JpegLayout:
    """Follow segments and entropy-coded scans from SOI to the first EOI."""
    layout = _JpegLayout(metadata=[])
    pos, in_scan = 2, False
    while True:
        if in_scan:
            found = _SCAN_MARKER.search(data, pos)
            if found is None:
                raise NotACandidate("truncated JPEG: no end-of-image (EOI) marker")
            pos = found.start()
        match = _MARKER.match(data, pos)
        if match is None:
            raise NotACandidate("truncated or corrupt JPEG: expected a marker")
        marker, pos = match[1][0], match.end()
        if marker == _EOI:
            if not in_scan:
                raise NotACandidate("corrupt JPEG: it ends before any image data")
            layout.end = pos
            return layout
        if marker in _STANDALONE_MARKERS:
            continue
        if marker == _SOI or pos + 2 > len(data):
            raise NotACandidate("truncated or corrupt JPEG: bad segment")
        seg_end = pos + ((data[pos] << 8) | data[pos + 1])
        if seg_end < pos + 2 or seg_end > len(data):
            raise NotACandidate("truncated JPEG: the file ends inside a segment")
        _note_jpeg_segment(layout, marker, data[pos - 2 : seg_end], in_scan)
        in_scan = in_scan or marker == _SOS
        pos = seg_end


def _note_jpeg_segment(layout: _JpegLayout, marker: int, segment: bytes, in_scan: bool) -> None:
    """Record what matters about one segment (``segment`` = FF, code, length, payload)."""
    payload = segment[4:]
    if marker in _SOF_MARKERS:
        if layout.frame is not None:
            raise NotACandidate("hierarchical JPEG (several frames) is not supported")
        layout.frame = payload
    elif marker == _SOS and layout.frame is None:
        raise NotACandidate("corrupt JPEG: image data before the frame header")
    elif marker == 0xE2 and payload.startswith(b"MPF\x00"):
        layout.multi_picture = True
    # Metadata is what precedes the frame.  Adobe APP14 is dropped: it names the
    # original encoder's colour transform, which our re-encode does not use.
    before_frame = layout.frame is None and not in_scan
    is_adobe = marker == _APP14 and payload.startswith(b"Adobe")
    if before_frame and (marker in JPEG_APP_MARKERS or marker == JPEG_COM) and not is_adobe:
        layout.metadata.append(segment)


def _check_jpeg_frame(frame: bytes | None) -> tuple[int, int]:
    """Reject from the SOF header what we cannot hold in 8-bit L/RGB planes."""
    if frame is None or len(frame) < 6:
        raise NotACandidate("corrupt JPEG: missing or malformed frame header")
    precision, height, width, components = struct.unpack(">BHHB", frame[:6])
    if precision != 8:
        raise NotACandidate(f"{precision}-bit JPEG: only 8-bit images are stored as latents")
    if components == 4:
        raise NotACandidate("CMYK/YCCK JPEG: only grayscale and RGB images are stored as latents")
    if components not in (1, 3):
        raise NotACandidate(f"JPEG with {components} colour components is not supported")
    if width == 0 or height == 0:
        raise NotACandidate("JPEG without explicit dimensions (DNL) is not supported")
    return width, height


def _pack_qtable(table) -> bytes:
    values = np.asarray(table, dtype=np.int64)
    if values.max() <= 255:
        return values.astype(np.uint8).tobytes()
    return values.astype(">u2").tobytes()
