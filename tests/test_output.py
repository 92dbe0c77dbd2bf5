"""Tests for sdfs.codec.output: reconstructions written at a length fixed when encoding."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from sdfs.codec.images import OutputSpec, SourceImage, probe
from sdfs.codec.output import JPEG, PNG_DEFLATE, PNG_STORED, OutputPlan, headroom, plan_output, render_output
from sdfs.errors import OutputEncodingError
from tests.test_images import (
    ASTRONAUT,
    CAMERA,
    COFFEE,
    LOGO,
    SRGB_ICC,
    decode,
    encode,
    exif_with_orientation,
    png_chunks,
    psnr,
)


def rendered(source: SourceImage, pixels=None) -> bytes:
    plan, _ = plan_output(source.spec, source.pixels, source.alpha)
    return render_output(source.spec, source.pixels if pixels is None else pixels, source.alpha, plan)


def natural_length(planned: int) -> int:
    """Invert planned = natural + headroom(natural) (strictly increasing in natural)."""
    return next(n for n in range(planned - 64, 0, -1) if n + headroom(n) == planned)


def perturb(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Every sample moved by -1, 0 or +1 at random, as a different decoder might."""
    noise = np.random.default_rng(seed).integers(-1, 2, pixels.shape)
    return np.clip(pixels.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def cleared_bits(written: np.ndarray, intended: np.ndarray) -> int:
    """How many low bits the output cleared from ``intended`` (asserting it did only that)."""
    for bits in range(9):
        if np.array_equal(written, intended & np.uint8((0xFF << bits) & 0xFF)):
            return bits
    raise AssertionError("the output is not the intended pixels with low bits cleared")


def padding_segments(jpeg: bytes, metadata: bytes) -> list[int]:
    """Sizes of the COM segments between the source metadata and the DQT."""
    assert jpeg.startswith(b"\xff\xd8" + metadata)
    sizes, pos = [], 2 + len(metadata)
    while jpeg[pos : pos + 2] == b"\xff\xfe":
        sizes.append(2 + struct.unpack_from(">H", jpeg, pos + 2)[0])
        assert jpeg[pos + 4 : pos + min(sizes[-1], 12)] == b"sdfs-pad"[: sizes[-1] - 4]
        pos += sizes[-1]
    assert jpeg[pos : pos + 2] == b"\xff\xdb"  # Pillow's tables follow
    return sizes


# ---- PNG ----------------------------------------------------------------------


def _rich_png(image: Image.Image) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "round trip")
    info.add_itxt("Description", "Zoë's photo", lang="en")
    exif = exif_with_orientation(8)
    return encode(image, "PNG", pnginfo=info, dpi=(72, 72), icc_profile=SRGB_ICC, exif=exif)


# 1024x1536, grainy so that it does not compress below one IDAT chunk: several strips and chunks
BIG_RGB = np.clip(np.tile(ASTRONAUT, (2, 3, 1)) + np.random.default_rng(7).integers(-3, 4, (1024, 1536, 3)),
                  0, 255).astype(np.uint8)

PNG_SOURCES = {
    "L": Image.fromarray(CAMERA),
    "RGB": Image.fromarray(BIG_RGB),
    "LA": Image.fromarray(np.dstack([CAMERA, CAMERA[::-1]])),
    "RGBA": Image.fromarray(LOGO),
    "palette+alpha": Image.fromarray(ASTRONAUT).quantize(16),
}


@pytest.mark.parametrize("name", list(PNG_SOURCES))
def test_png_round_trip_is_exact_compressed_and_keeps_metadata(name):
    image = PNG_SOURCES[name]
    options = {"transparency": bytes(range(0, 256, 16))} if name == "palette+alpha" else {}
    original = _rich_png(image) if not options else encode(image, "PNG", **options)
    source = probe(original)
    plan, first = plan_output(source.spec, source.pixels, source.alpha)
    assert plan.coding == PNG_DEFLATE and len(first) == plan.length
    assert render_output(source.spec, source.pixels, source.alpha, plan) == first  # same pixels, same bytes

    result, reference = decode(first), decode(original)
    assert result.mode == source.spec.mode and result.size == reference.size
    samples = np.asarray(result).reshape(result.height, result.width, -1)
    np.testing.assert_array_equal(samples[:, :, : source.pixels.shape[2]], source.pixels)
    if source.alpha is not None:
        np.testing.assert_array_equal(samples[:, :, -1], source.alpha)
    for key in ("Title", "Description", "icc_profile", "exif", "dpi"):
        assert result.info.get(key) == reference.info.get(key), key
    raw = source.pixels.size + (0 if source.alpha is None else source.alpha.size)
    assert plan.length < raw  # compressed, not stored


def test_png_output_is_filtered_deflate_padded_by_one_ancillary_chunk():
    source = probe(encode(Image.fromarray(BIG_RGB), "PNG"))
    plan, out = plan_output(source.spec, source.pixels, None)
    chunks = png_chunks(out)
    types = [t for t, _ in chunks]
    assert types[0] == b"IHDR" and types[-2:] == [b"sdPd", b"IEND"]
    idats = [p for t, p in chunks if t == b"IDAT"]
    assert len(idats) > 1 and all(len(p) == 1 << 20 for p in idats[:-1])
    padding = chunks[-2][1]
    assert len(padding) + 12 == headroom(natural_length(plan.length)) and not any(padding)
    rows = np.frombuffer(zlib.decompress(b"".join(idats)), np.uint8).reshape(1024, 1 + 1536 * 3)
    assert set(np.unique(rows[:, 0])) <= {0, 1, 2, 3, 4} and len(np.unique(rows[:, 0])) > 1
    with Image.open(io.BytesIO(out)) as im:
        im.verify()  # every CRC, the padding chunk's included


@pytest.mark.parametrize("name", ["RGB", "RGBA"])
def test_png_length_holds_when_a_decode_differs(name):
    """A decode on another device differs by a level here and there: the
    output keeps its length. When it no longer fits, it loses low bits of its
    colour samples (and only those: alpha stays exact), never its length."""
    image = encode(PNG_SOURCES[name], "PNG")
    source = probe(image)
    plan, _ = plan_output(source.spec, source.pixels, source.alpha)
    noise = np.random.default_rng(5).integers(0, 256, source.pixels.shape, dtype=np.uint8)
    seen = set()
    for pixels in (perturb(source.pixels, 1), source.pixels // 2 * 2 + 1, noise):
        out = render_output(source.spec, pixels, source.alpha, plan)
        assert len(out) == plan.length
        written = np.asarray(decode(out)).reshape(source.spec.height, source.spec.width, -1)
        seen.add(cleared_bits(written[:, :, :3], pixels))
        if source.alpha is not None:
            np.testing.assert_array_equal(written[:, :, 3], source.alpha)
    assert max(seen) >= 1  # the fallback did run: noise cannot fit a photo's room


@pytest.mark.parametrize("offset, coarsened", [(0, False), (12, False), (1, True), (11, True), (-500, True)],
                         ids=["exact", "empty-chunk", "gap-1", "gap-11", "too-big"])
def test_png_padding_at_its_edges(offset, coarsened):
    source = probe(encode(Image.fromarray(COFFEE), "PNG"))
    plan, _ = plan_output(source.spec, source.pixels, None)
    length = natural_length(plan.length) + offset
    out = render_output(source.spec, source.pixels, None, OutputPlan(PNG_DEFLATE, length))
    assert len(out) == length
    bits = cleared_bits(np.asarray(decode(out)), source.pixels)
    assert (bits > 0) == coarsened
    types = [t for t, _ in png_chunks(out)]
    assert (b"sdPd" in types) == (not (offset == 0 and not coarsened))


def test_incompressible_png_falls_back_to_stored_blocks():
    noise = np.random.default_rng(3).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    source = probe(encode(Image.fromarray(noise), "PNG"))
    plan, out = plan_output(source.spec, source.pixels, None)
    assert plan == OutputPlan(PNG_STORED, 8 + 25 + (2 + 300 * 601 + 5 * 3 + 4) + 12 + 12)
    stream = b"".join(p for t, p in png_chunks(out) if t == b"IDAT")
    assert stream[:2] == b"\x78\x01" and stream[2] & 0b110 == 0  # first block BTYPE=00
    rows = np.frombuffer(zlib.decompress(stream), np.uint8).reshape(300, 601)
    assert not rows[:, 0].any()  # filter byte 0 on every row
    smooth = np.zeros_like(noise)
    again = render_output(source.spec, smooth, None, plan)  # any pixels: the same length
    assert len(again) == plan.length
    np.testing.assert_array_equal(np.asarray(decode(again)), smooth)
    with pytest.raises(OutputEncodingError, match="always encodes to"):
        render_output(source.spec, noise, None, OutputPlan(PNG_STORED, plan.length + 1))


def test_png_that_cannot_fit_raises_one_line():
    source = probe(encode(Image.fromarray(LOGO), "PNG"))
    with pytest.raises(OutputEncodingError) as info:
        render_output(source.spec, source.pixels, source.alpha, OutputPlan(PNG_DEFLATE, 200))
    assert "\n" not in str(info.value) and "200 bytes" in str(info.value)


def test_big_png_is_filtered_in_strips_with_bounded_memory():
    """Temporaries follow the strip, not the image: 12 MP of RGB (36 MB of
    samples) costs the compressed output twice (its pieces, then the file)
    plus a few strips' worth. The stored coding needed three times the samples."""
    import tracemalloc

    pixels = np.tile(ASTRONAUT, (6, 8, 1))  # 4096 wide, 3072 high
    spec = OutputSpec("PNG", "RGB", 4096, 3072, b"")
    tracemalloc.start()
    try:
        plan, out = plan_output(spec, pixels, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.coding == PNG_DEFLATE
    assert peak < 2 * len(out) + (16 << 20) and peak < pixels.nbytes // 2, (peak, len(out))


# ---- JPEG ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def exif_jpeg() -> tuple[bytes, SourceImage]:
    exif = exif_with_orientation(6)
    jpeg = encode(Image.fromarray(COFFEE), "JPEG", quality=90, exif=exif, icc_profile=SRGB_ICC)
    return jpeg, probe(jpeg)


def _assert_same_jpeg_kind(out: bytes, original: bytes, pixels: np.ndarray) -> Image.Image:
    result, reference = decode(out), decode(original)
    assert result.format == "JPEG"
    assert (result.mode, result.size) == (reference.mode, reference.size)
    assert result.info["exif"] == reference.info["exif"]
    assert result.info["icc_profile"] == reference.info["icc_profile"]
    assert result.getexif()[0x0112] == 6
    assert psnr(np.asarray(result), pixels) > 30
    return result


def test_jpeg_round_trip_keeps_metadata_and_quality(exif_jpeg):
    original, source = exif_jpeg
    plan, first = plan_output(source.spec, source.pixels, None)
    out = render_output(source.spec, source.pixels, None, plan)
    assert plan.coding == JPEG and out == first and len(out) == plan.length
    result = _assert_same_jpeg_kind(out, original, source.pixels)
    assert result.quantization == decode(original).quantization  # same tables: same quality
    assert b"sdfs-pad" in out


def test_jpeg_re_encode_keeps_tables_and_subsampling():
    jpeg = encode(Image.fromarray(ASTRONAUT), "JPEG", quality=80, subsampling=1)
    result = decode(rendered(probe(jpeg)))
    assert JpegImagePlugin.get_sampling(result) == 1
    assert result.quantization == decode(jpeg).quantization


def test_gray_jpeg_round_trip_stays_l():
    original = encode(Image.fromarray(CAMERA), "JPEG", quality=85)
    source = probe(original)
    out = rendered(source)
    result = decode(out)
    assert result.mode == "L"
    assert psnr(np.asarray(result), CAMERA) > 30


def test_jpeg_length_survives_pixels_perturbed_by_one(exif_jpeg):
    original, source = exif_jpeg
    plan, _ = plan_output(source.spec, source.pixels, None)
    for seed in range(3):
        pixels = perturb(source.pixels, seed)
        out = render_output(source.spec, pixels, None, plan)
        assert len(out) == plan.length
        _assert_same_jpeg_kind(out, original, pixels)


@pytest.mark.parametrize(
    "offset, notched",
    [(0, False), (4, False), (1, True), (2, True), (3, True), (-300, True), (200_000, False)],
    ids=["exact", "smallest-com", "gap-1", "gap-2", "gap-3", "too-big", "several-coms"],
)
def test_jpeg_padding_and_notch_lower(exif_jpeg, offset, notched):
    original, source = exif_jpeg
    plan, _ = plan_output(source.spec, source.pixels, None)
    length = natural_length(plan.length) + offset
    out = render_output(source.spec, source.pixels, None, OutputPlan(JPEG, length))
    assert len(out) == length
    result = _assert_same_jpeg_kind(out, original, source.pixels)
    source_tables = decode(original).quantization
    if notched:  # re-encoded a notch lower: every table entry coarser or equal
        assert result.quantization != source_tables
        for k, table in source_tables.items():
            assert np.all(np.array(result.quantization[k]) >= np.array(table))
    else:
        assert result.quantization == source_tables
    padding = padding_segments(out, source.spec.metadata)
    if not notched:
        assert sum(padding) == offset
        assert len(padding) == {0: 0, 4: 1, 200_000: 4}[offset]
    assert all(4 <= size <= 65537 for size in padding)


def test_jpeg_that_cannot_fit_raises(exif_jpeg):
    _, source = exif_jpeg
    with pytest.raises(OutputEncodingError) as info:
        render_output(source.spec, source.pixels, None, OutputPlan(JPEG, 1000))
    assert "\n" not in str(info.value)


def test_jpeg_spec_without_tables_uses_default_tables():
    spec = OutputSpec("JPEG", "RGB", 600, 400, b"")
    plan, _ = plan_output(spec, COFFEE, None)
    out = render_output(spec, COFFEE, None, plan)
    assert len(out) == plan.length
    assert psnr(np.asarray(decode(out)), COFFEE) > 30


def test_sixteen_bit_quantization_tables_round_trip():
    coarse = [[300] * 64, [300] * 64]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = probe(encode(Image.fromarray(ASTRONAUT), "JPEG", qtables=coarse))
    assert [len(t) for t in source.spec.jpeg_qtables] == [128, 128]
    out = rendered(source)
    assert list(decode(out).quantization[0]) == [300] * 64


# ---- invalid arguments -------------------------------------------------------------


GRAY4, RGB4, ALPHA4 = (np.zeros(s, np.uint8) for s in [(4, 4, 1), (4, 4, 3), (4, 4)])


@pytest.mark.parametrize(
    "spec, pixels, alpha",
    [
        (OutputSpec("JPEG", "LA", 4, 4, b""), GRAY4, ALPHA4),
        (OutputSpec("PNG", "RGB", 4, 4, b""), GRAY4, None),
        (OutputSpec("PNG", "RGB", 4, 4, b""), RGB4.astype(np.float32), None),
        (OutputSpec("PNG", "RGB", 4, 4, b""), RGB4, ALPHA4),
        (OutputSpec("PNG", "RGBA", 4, 4, b""), RGB4, None),
        (OutputSpec("GIF", "RGB", 4, 4, b""), RGB4, None),
    ],
    ids=["jpeg-alpha", "wrong-channels", "wrong-dtype", "unexpected-alpha", "missing-alpha", "gif"],
)
def test_planes_that_do_not_match_the_spec_raise(spec, pixels, alpha):
    with pytest.raises(OutputEncodingError) as planning:
        plan_output(spec, pixels, alpha)
    with pytest.raises(OutputEncodingError) as rendering:
        render_output(spec, pixels, alpha, OutputPlan(PNG_DEFLATE, 100))
    for info in (planning, rendering):
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec, coding", [(OutputSpec("PNG", "RGB", 4, 4, b""), JPEG),
                                          (OutputSpec("JPEG", "RGB", 4, 4, b""), PNG_DEFLATE)])
def test_a_coding_of_another_format_is_refused(spec, coding):
    with pytest.raises(OutputEncodingError, match="cannot be written as"):
        render_output(spec, RGB4, None, OutputPlan(coding, 1000))
