"""Latents <-> bytes: quantization, prediction and entropy coding.

Two quantizers over the float latent (C, h, w):

* ``scalar``: each channel mapped affinely onto 2**bits levels between its own
  min and max (no clipping, so no outlier is lost).
* ``palette``: channels first mapped to 8 bits as above, then every latent
  pixel (a C-vector) replaced by the nearest of ``colors`` palette entries
  found by k-means, with Floyd-Steinberg error diffusion so the local mean is
  kept (the 2022 experiment's trick, done in C dimensions rather than RGBA).

The resulting integer planes go through a per-plane predictor (none, left,
up or gradient; whichever codes smallest) and the smaller of zlib and raw
LZMA. The blob is self-describing; docs/FORMAT.md lists its fields.
"""

from __future__ import annotations

import lzma
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import RecordError
from .binary import Reader, Writer


@dataclass(frozen=True)
class Quality:
    name: str
    method: str  # "scalar" or "palette"
    level: int  # bits per value (scalar) or palette size (palette)
    summary: str


QUALITIES = {
    q.name: q
    for q in (
        Quality("high", "scalar", 8, "8-bit per-channel scalar quantization"),
        Quality("medium", "scalar", 6, "6-bit per-channel scalar quantization"),
        Quality("compact", "palette", 256, "256-entry palette over latent pixels, dithered (~5 KB at 512x512)"),
        Quality("low", "palette", 64, "64-entry palette over latent pixels, dithered"),
    )
}
DEFAULT_QUALITY = "compact"

METHOD_IDS = {"scalar": 1, "palette": 2}
PREDICTORS = ("none", "left", "up", "gradient")
CODER_RAW, CODER_ZLIB, CODER_LZMA = 0, 1, 2
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
_KMEANS_SEED = 0x5DF5
_KMEANS_SAMPLE = 1 << 16
_KMEANS_ITERATIONS = 12


def quality(name: str) -> Quality:
    try:
        return QUALITIES[name]
    except KeyError:
        raise ValueError(f"unknown quality {name!r}; choose one of {', '.join(QUALITIES)}") from None


# --------------------------------------------------------------------------- per-channel 8-bit mapping


def _channel_ranges(latent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = latent.reshape(latent.shape[0], -1)
    low, high = flat.min(axis=1).astype(np.float32), flat.max(axis=1).astype(np.float32)
    # a constant channel still needs a span that float32 can resolve at its magnitude
    minimum_span = np.float32(1e-6) * np.maximum(1, np.abs(low))
    return low, np.maximum(high, low + minimum_span)


def _to_levels(latent: np.ndarray, low: np.ndarray, high: np.ndarray, levels: int) -> np.ndarray:
    span = (high - low)[:, None, None]
    scaled = (latent - low[:, None, None]) / span * (levels - 1)
    return np.clip(np.rint(scaled), 0, levels - 1)


def _from_levels(values: np.ndarray, low: np.ndarray, high: np.ndarray, levels: int) -> np.ndarray:
    span = (high - low)[:, None, None]
    return (values.astype(np.float32) / (levels - 1) * span + low[:, None, None]).astype(np.float32)


# --------------------------------------------------------------------------- prediction + entropy coding


def _predict(plane: np.ndarray, predictor: int) -> np.ndarray:
    """Residuals mod 256 of a uint8 plane; inverted exactly by _unpredict."""
    p = plane.astype(np.int16)
    if predictor == 1:
        p[:, 1:] -= plane[:, :-1]
    elif predictor == 2:
        p[1:, :] -= plane[:-1, :]
    elif predictor == 3:  # a + b - c: the 2-D difference, undone by two cumulative sums
        p = np.diff(np.diff(np.pad(p, ((1, 0), (1, 0))), axis=0), axis=1)
    return (p % 256).astype(np.uint8)


def _unpredict(residual: np.ndarray, predictor: int) -> np.ndarray:
    # uint8 sums wrap mod 256, exactly the inverse of _predict, in 1 byte a sample
    if predictor == 1:
        return np.cumsum(residual, axis=1, dtype=np.uint8)
    if predictor == 2:
        return np.cumsum(residual, axis=0, dtype=np.uint8)
    if predictor == 3:
        return np.cumsum(np.cumsum(residual, axis=0, dtype=np.uint8), axis=1, dtype=np.uint8)
    return residual


def _compress(data: bytes) -> tuple[int, bytes]:
    candidates = [
        (CODER_RAW, data),
        (CODER_ZLIB, zlib.compress(data, 9)),
        (CODER_LZMA, lzma.compress(data, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)),
    ]
    return min(candidates, key=lambda c: len(c[1]))


def _decompress(coder: int, data: bytes, expected: int) -> bytes:
    try:
        if coder == CODER_RAW:
            out = data
        elif coder == CODER_ZLIB:
            out = zlib.decompressobj().decompress(data, expected)
        elif coder == CODER_LZMA:
            out = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS).decompress(data, expected)
        else:
            raise RecordError(f"latent payload uses unknown entropy coder {coder}")
    except (zlib.error, lzma.LZMAError) as error:
        raise RecordError(f"latent payload is corrupt: {error}") from error
    if len(out) != expected:
        raise RecordError(f"latent payload decodes to {len(out)} bytes, expected {expected}")
    return out


def _pack_planes(planes: np.ndarray, w: Writer) -> None:
    """Choose a predictor per plane by the size its residuals compress to."""
    residuals = []
    for plane in planes:
        options = [_predict(plane, p) for p in range(len(PREDICTORS))]
        best = min(range(len(options)), key=lambda p: len(zlib.compress(options[p].tobytes(), 6)))
        w.u8(best)
        residuals.append(options[best])
    coder, payload = _compress(np.stack(residuals).tobytes())
    w.u8(coder).blob(payload)


def _unpack_planes(r: Reader, count: int, height: int, width: int) -> np.ndarray:
    predictors = [r.u8("predictor") for _ in range(count)]
    if any(p >= len(PREDICTORS) for p in predictors):
        raise RecordError("latent payload names an unknown predictor")
    coder = r.u8("coder")
    raw = _decompress(coder, r.blob("payload"), count * height * width)
    residuals = np.frombuffer(raw, np.uint8).reshape(count, height, width)
    return np.stack([_unpredict(res, p) for res, p in zip(residuals, predictors)])


# --------------------------------------------------------------------------- palette


def _kmeans(points: np.ndarray, colors: int) -> np.ndarray:
    """Deterministic k-means++ / Lloyd over float points (N, C)."""
    rng = np.random.default_rng(_KMEANS_SEED)
    if len(points) > _KMEANS_SAMPLE:
        points = points[rng.choice(len(points), _KMEANS_SAMPLE, replace=False)]
    unique = np.unique(points, axis=0)
    if len(unique) <= colors:
        return unique
    centers = [points[rng.integers(len(points))]]
    nearest = ((points - centers[0]) ** 2).sum(1)
    for _ in range(colors - 1):
        centers.append(points[rng.choice(len(points), p=nearest / nearest.sum())] if nearest.sum() > 0 else points[0])
        nearest = np.minimum(nearest, ((points - centers[-1]) ** 2).sum(1))
    centers = np.array(centers)
    for _ in range(_KMEANS_ITERATIONS):
        labels = _nearest(points, centers)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points)
        counts = np.bincount(labels, minlength=len(centers))[:, None]
        centers = np.where(counts > 0, sums / np.maximum(counts, 1), centers)
    return centers


def _nearest(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    out = np.empty(len(points), np.int64)
    c2 = (centers**2).sum(1)
    for start in range(0, len(points), 16384):  # bounded memory for large latents
        chunk = points[start : start + 16384]
        out[start : start + len(chunk)] = np.argmin(c2[None, :] - 2 * chunk @ centers.T, axis=1)
    return out


def _dither(image: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Floyd-Steinberg error diffusion over (h, w, C) onto palette (K, C).

    Pixel (i, j) depends on (i, j-1), (i-1, j-1), (i-1, j) and (i-1, j+1), all
    of which lie on earlier "wavefronts" j + 2i, so each wavefront is done at
    once: w + 2h numpy steps instead of w * h Python steps, same result.
    """
    height, width, _ = image.shape
    error = np.zeros((height + 1, width + 2, image.shape[2]))  # margins absorb edge pushes
    labels = np.zeros((height, width), np.int64)
    rows_all = np.arange(height)
    p2 = (palette**2).sum(1)
    for t in range(width + 2 * (height - 1)):
        cols = t - 2 * rows_all
        live = (cols >= 0) & (cols < width)
        rows, cols = rows_all[live], cols[live]
        value = image[rows, cols] + error[rows, cols + 1]
        chosen = np.argmin(p2[None, :] - 2 * value @ palette.T, axis=1)
        labels[rows, cols] = chosen
        err = value - palette[chosen]
        np.add.at(error, (rows, cols + 2), err * (7 / 16))
        np.add.at(error, (rows + 1, cols), err * (3 / 16))
        np.add.at(error, (rows + 1, cols + 1), err * (5 / 16))
        np.add.at(error, (rows + 1, cols + 2), err * (1 / 16))
    return labels


def _order_palette(palette: np.ndarray) -> np.ndarray:
    """Sort entries along their first principal axis so that neighbouring
    latent pixels get nearby indices, which the predictors can exploit."""
    if len(palette) < 2:
        return palette
    centred = palette - palette.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    return palette[np.argsort(centred @ axis, kind="stable")]


# --------------------------------------------------------------------------- public API


def encode_latent(latent: np.ndarray, quality_name: str = DEFAULT_QUALITY) -> bytes:
    """Float latent (C, h, w) -> self-describing bytes."""
    q = quality(quality_name)
    latent = np.asarray(latent, np.float32)
    if latent.ndim != 3 or not np.isfinite(latent).all():
        raise ValueError("latent must be a finite (C, h, w) array")
    channels, height, width = latent.shape
    low, high = _channel_ranges(latent)
    w = Writer().u8(METHOD_IDS[q.method]).varint(q.level).u8(channels).varint(height).varint(width)
    for lo, hi in zip(low, high):
        w.f32(float(lo)).f32(float(hi))
    if q.method == "scalar":
        _pack_planes(_to_levels(latent, low, high, 2**q.level).astype(np.uint8), w)
    else:
        pixels = _to_levels(latent, low, high, 256).reshape(channels, -1).T.astype(np.float64)
        palette = _order_palette(np.rint(_kmeans(pixels, q.level)).clip(0, 255))
        labels = _dither(pixels.reshape(height, width, channels), palette)
        w.varint(len(palette)).raw(palette.astype(np.uint8).tobytes())
        _pack_planes(labels.astype(np.uint8)[None], w)
    return w.getvalue()


def decode_latent(blob: bytes, expected_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Bytes from encode_latent -> float32 latent (C, h, w).

    ``expected_shape`` (from the record's image size and model) is checked
    before anything is decompressed, so a hostile blob cannot claim a huge one.
    """
    r = Reader(blob, "latent payload")
    method, level = r.u8("method"), r.varint("level")
    channels, height, width = r.u8("channels"), r.varint("height"), r.varint("width")
    if expected_shape is not None and (channels, height, width) != tuple(expected_shape):
        raise RecordError(f"latent payload is {channels}x{height}x{width}, the record needs {expected_shape}")
    if not (channels and height and width) or channels * height * width > 1 << 31:
        raise RecordError(f"latent payload has an impossible shape {channels}x{height}x{width}")
    ranges = np.array([(r.f32("low"), r.f32("high")) for _ in range(channels)], np.float32).reshape(channels, 2)
    low, high = ranges[:, 0], ranges[:, 1]
    if method == METHOD_IDS["scalar"] and 1 <= level <= 8:
        values = _unpack_planes(r, channels, height, width)
        latent = _from_levels(values, low, high, 2**level)
    elif method == METHOD_IDS["palette"] and 1 <= level <= 256:
        size = r.varint("palette size")
        if not 1 <= size <= 256:
            raise RecordError(f"latent payload has an impossible palette size {size}")
        palette = np.frombuffer(r.raw(size * channels, "palette"), np.uint8).reshape(size, channels)
        labels = _unpack_planes(r, 1, height, width)[0]
        if labels.max() >= size:
            raise RecordError("latent payload indexes past its palette")
        latent = _from_levels(palette[labels].transpose(2, 0, 1), low, high, 256)
    else:
        raise RecordError(f"latent payload uses unknown method {method} (level {level})")
    r.expect_end()
    return latent


def encode_plane(plane: np.ndarray) -> bytes:
    """Lossless coding of one uint8 plane (H, W), e.g. an alpha channel."""
    w = Writer()
    _pack_planes(np.asarray(plane, np.uint8)[None], w)
    return w.getvalue()


def decode_plane(blob: bytes, height: int, width: int) -> np.ndarray:
    """``height`` and ``width`` come from a record whose size was already checked."""
    r = Reader(blob, "alpha plane")
    plane = _unpack_planes(r, 1, height, width)[0]
    r.expect_end()
    return plane
