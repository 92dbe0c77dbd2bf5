"""Tests for sdfs.codec.images: safe probing and fixed-length output encoding."""

from __future__ import annotations

import io
import random
import struct
import time
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin
from skimage import data as skdata

from sdfs.codec.images import (
    max_candidate_bytes,
    DEFAULT_MAX_PIXELS,
    HEAD_BYTES,
    SourceImage,
    probe,
    screen,
)
from sdfs.errors import NotACandidate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- helpers ---------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload)
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def make_png(width, height, depth, colour, raw=b"", extra=()) -> bytes:
    """A PNG built by hand: IHDR, extra chunks, one IDAT over ``raw`` rows, IEND."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + b"".join(chunk(t, p) for t, p in extra)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        out.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def insert_before_idat(png: bytes, *chunks: bytes) -> bytes:
    at = png.index(b"IDAT") - 4
    return png[:at] + b"".join(chunks) + png[at:]


def rejection(data: bytes, *words: str, **kwargs) -> str:
    """Assert probe rejects ``data`` with a one-line message containing ``words``."""
    with pytest.raises(NotACandidate) as info:
        probe(data, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    for word in words:
        assert word.lower() in message.lower(), message
    return message


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def decode(blob: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(blob))
    image.load()
    return image


ASTRONAUT = skdata.astronaut()  # (512, 512, 3)
CAMERA = skdata.camera()  # (512, 512)
COFFEE = skdata.coffee()  # (400, 600, 3): not square, so a rotation would show
LOGO = skdata.logo()  # (500, 500, 4)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    exif[0x010F] = "sdfs test camera"
    return exif.tobytes()


# ---- probe: candidates -------------------------------------------------------


def test_rgb_png_is_candidate_with_exact_pixels():
    source = probe(encode(Image.fromarray(ASTRONAUT), "PNG"))
    assert (source.spec.format, source.spec.mode) == ("PNG", "RGB")
    assert (source.spec.width, source.spec.height) == (512, 512)
    assert source.alpha is None
    assert source.pixels.dtype == np.uint8
    np.testing.assert_array_equal(source.pixels, ASTRONAUT)


def test_gray_png_stays_single_channel_l():
    source = probe(encode(Image.fromarray(CAMERA), "PNG"))
    assert source.spec.mode == "L"
    assert source.pixels.shape == (512, 512, 1)
    np.testing.assert_array_equal(source.pixels[:, :, 0], CAMERA)


def test_palette_png_without_transparency_becomes_rgb():
    palette = Image.fromarray(ASTRONAUT).quantize(32)
    source = probe(encode(palette, "PNG"))
    assert source.spec.mode == "RGB" and source.alpha is None
    np.testing.assert_array_equal(source.pixels, np.asarray(palette.convert("RGB")))


def test_palette_png_with_transparency_becomes_rgba_with_exact_alpha():
    palette = Image.fromarray(ASTRONAUT).quantize(16)
    alphas = bytes(range(0, 256, 16))  # palette entry i has alpha 16 * i
    source = probe(encode(palette, "PNG", transparency=alphas))
    assert source.spec.mode == "RGBA"
    indices = np.asarray(palette)
    np.testing.assert_array_equal(source.alpha, np.frombuffer(alphas, np.uint8)[indices])
    np.testing.assert_array_equal(source.pixels, np.asarray(palette.convert("RGB")))


def test_rgba_png_keeps_alpha_separately_and_exactly():
    source = probe(encode(Image.fromarray(LOGO), "PNG"))
    assert source.spec.mode == "RGBA"
    assert source.pixels.shape == (500, 500, 3)
    np.testing.assert_array_equal(source.pixels, LOGO[:, :, :3])
    np.testing.assert_array_equal(source.alpha, LOGO[:, :, 3])


def test_la_png_keeps_gray_and_alpha():
    alpha = np.tile(np.arange(512, dtype=np.uint16) // 2, (512, 1)).astype(np.uint8)
    source = probe(encode(Image.fromarray(np.dstack([CAMERA, alpha])), "PNG"))
    assert source.spec.mode == "LA"
    assert source.pixels.shape == (512, 512, 1)
    np.testing.assert_array_equal(source.pixels[:, :, 0], CAMERA)
    np.testing.assert_array_equal(source.alpha, alpha)


def test_one_bit_gray_png_becomes_8_bit_l():
    bits = CAMERA > 128
    png = encode(Image.fromarray(bits), "PNG")
    assert png[24] == 1  # IHDR bit depth: really a 1-bit file
    source = probe(png)
    assert source.spec.mode == "L"
    np.testing.assert_array_equal(source.pixels[:, :, 0], np.where(bits, 255, 0))


def test_two_bit_gray_with_colour_key_becomes_la():
    # 4x2 image, 2-bit samples 0,1,2,3 per row; the tRNS key 2 is transparent.
    raw = b"\x00" + bytes([0b00011011]) + b"\x00" + bytes([0b11100100])
    png = make_png(4, 2, 2, 0, raw, extra=[(b"tRNS", b"\x00\x02")])
    source = probe(png)
    assert source.spec.mode == "LA"
    np.testing.assert_array_equal(source.pixels[:, :, 0], [[0, 85, 170, 255], [255, 170, 85, 0]])
    np.testing.assert_array_equal(source.alpha, [[255, 255, 0, 255], [255, 0, 255, 255]])


def test_gray_and_rgb_colour_keys_become_alpha():
    gray = probe(encode(Image.fromarray(CAMERA), "PNG", transparency=int(CAMERA[0, 0])))
    assert gray.spec.mode == "LA"
    np.testing.assert_array_equal(gray.alpha == 0, CAMERA == CAMERA[0, 0])

    key = tuple(int(v) for v in ASTRONAUT[0, 0])
    rgb = probe(encode(Image.fromarray(ASTRONAUT), "PNG", transparency=key))
    assert rgb.spec.mode == "RGBA"
    np.testing.assert_array_equal(rgb.alpha == 0, np.all(ASTRONAUT == key, axis=2))
    np.testing.assert_array_equal(rgb.pixels, ASTRONAUT)


def test_rgb_jpeg_records_quantization_and_subsampling():
    jpeg = encode(Image.fromarray(ASTRONAUT), "JPEG", quality=80, subsampling=1)
    source = probe(jpeg)
    original = decode(jpeg)
    assert (source.spec.format, source.spec.mode) == ("JPEG", "RGB")
    assert source.spec.jpeg_subsampling == 1
    assert source.spec.jpeg_qtables == tuple(bytes(original.quantization[k]) for k in (0, 1))
    np.testing.assert_array_equal(source.pixels, np.asarray(original))
    assert psnr(source.pixels, ASTRONAUT) > 30


def test_gray_jpeg_stays_l():
    source = probe(encode(Image.fromarray(CAMERA), "JPEG", quality=90))
    assert source.spec.mode == "L"
    assert source.pixels.shape == (512, 512, 1)
    assert len(source.spec.jpeg_qtables) == 1
    assert psnr(source.pixels[:, :, 0], CAMERA) > 30


@pytest.mark.parametrize("options", [{"progressive": True}, {"restart_marker_blocks": 4}])
def test_progressive_and_restart_marker_jpegs_are_candidates(options):
    source = probe(encode(Image.fromarray(COFFEE), "JPEG", quality=85, **options))
    assert source.pixels.shape == (400, 600, 3)
    assert psnr(source.pixels, COFFEE) > 30


def test_jpeg_exif_orientation_and_icc_are_kept_but_not_applied():
    exif = exif_with_orientation(6)
    jpeg = encode(Image.fromarray(COFFEE), "JPEG", quality=90, exif=exif, icc_profile=SRGB_ICC)
    source = probe(jpeg)
    # Pixels stay as stored (landscape); orientation 6 would make them portrait.
    assert (source.spec.width, source.spec.height) == (600, 400)
    assert source.pixels.shape == (400, 600, 3)
    assert b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif in source.spec.metadata
    assert b"ICC_PROFILE\x00" in source.spec.metadata
    assert source.spec.metadata.startswith(b"\xff\xe0")  # JFIF APP0 first, as in the file


def test_jpeg_metadata_keeps_com_and_drops_adobe_app14():
    jpeg = encode(Image.fromarray(ASTRONAUT), "JPEG", comment=b"hello")
    adobe = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x01"  # transform 1 = YCbCr
    jpeg = jpeg[:2] + adobe + jpeg[2:]
    source = probe(jpeg)
    assert b"Adobe" not in source.spec.metadata
    assert b"\xff\xfe\x00\x07hello" in source.spec.metadata
    assert source.spec.metadata.startswith(b"\xff\xe0\x00\x10JFIF")


def test_png_metadata_whitelist_in_original_order():
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "plain")
    info.add_text("Comment", "squeezed " * 20, zip=True)
    info.add_itxt("Author", "Zoë", lang="fr")
    png = encode(
        Image.fromarray(ASTRONAUT), "PNG", pnginfo=info, dpi=(300, 300),
        icc_profile=SRGB_ICC, exif=exif_with_orientation(3),
    )  # fmt: skip
    private = chunk(b"prVt", b"not kept")
    png = insert_before_idat(png, private, chunk(b"gAMA", struct.pack(">I", 45455)))
    # A text chunk after the image data, which the output moves before IDAT.
    png = png[:-12] + chunk(b"tEXt", b"Late\x00after idat") + png[-12:]
    source = probe(png)
    kept = png_chunks(PNG_SIGNATURE + source.spec.metadata)
    wanted = [(t, p) for t, p in png_chunks(png) if t not in (b"IHDR", b"IDAT", b"IEND", b"prVt")]
    assert kept == wanted
    kinds = [t.decode() for t, _ in kept]
    assert kinds == ["iCCP", "tEXt", "zTXt", "iTXt", "pHYs", "eXIf", "gAMA", "tEXt"]


def test_palette_png_drops_palette_bound_sbit_and_bkgd():
    palette = encode(Image.fromarray(ASTRONAUT).quantize(8), "PNG")
    palette = insert_before_idat(
        palette, chunk(b"sBIT", b"\x08\x08\x08"), chunk(b"bKGD", b"\x03"), chunk(b"tIME", bytes(7))
    )
    kinds = [t for t, _ in png_chunks(PNG_SIGNATURE + probe(palette).spec.metadata)]
    assert kinds == [b"tIME"]

    rgb = encode(Image.fromarray(ASTRONAUT), "PNG")
    rgb = insert_before_idat(rgb, chunk(b"sBIT", b"\x05\x06\x05"), chunk(b"bKGD", bytes(6)))
    kinds = [t for t, _ in png_chunks(PNG_SIGNATURE + probe(rgb).spec.metadata)]
    assert kinds == [b"sBIT", b"bKGD"]


def test_6000x4000_photo_is_within_default_limit():
    jpeg = encode(Image.new("L", (6000, 4000), 128), "JPEG")
    assert probe(jpeg).spec.width == 6000
    assert 6000 * 4000 <= DEFAULT_MAX_PIXELS


# ---- probe: non-candidates ---------------------------------------------------


def test_empty_input():
    rejection(b"", "empty")


def test_random_bytes():
    rejection(np.random.default_rng(1).bytes(4096), "not a png or jpeg")


def test_random_bytes_after_png_signature():
    rejection(PNG_SIGNATURE + np.random.default_rng(2).bytes(4096), "png")


@pytest.mark.parametrize("fmt, name", [("GIF", "GIF"), ("WEBP", "WebP"), ("TIFF", "TIFF")])
def test_other_formats_are_named(fmt, name):
    rejection(encode(Image.fromarray(ASTRONAUT), fmt), name, "only PNG and JPEG")


def test_16_bit_gray_png():
    png = encode(Image.fromarray((CAMERA.astype(np.uint16) * 257)), "PNG")
    assert png[24] == 16
    rejection(png, "16-bit")


def test_16_bit_rgb_png_is_not_silently_reduced():
    raw = (b"\x00" + bytes(12)) * 2  # 2x2 RGB, 6 bytes per pixel
    rejection(make_png(2, 2, 16, 2, raw), "16-bit")


def test_cmyk_jpeg():
    rejection(encode(Image.fromarray(ASTRONAUT).convert("CMYK"), "JPEG"), "CMYK")


def test_12_bit_jpeg():
    jpeg = bytearray(encode(Image.fromarray(ASTRONAUT), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 4] = 12  # SOF precision byte
    rejection(bytes(jpeg), "12-bit")


def test_animated_png():
    frames = [Image.fromarray(ASTRONAUT), Image.fromarray(ASTRONAUT[::-1])]
    apng = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert b"acTL" in apng
    rejection(apng, "animated")


def test_multi_picture_jpeg():
    second = Image.fromarray(COFFEE)
    mpo = encode(Image.fromarray(ASTRONAUT), "MPO", save_all=True, append_images=[second])
    rejection(mpo, "multi-picture")


def test_truncated_png():
    png = encode(Image.fromarray(ASTRONAUT), "PNG")
    rejection(png[: len(png) // 2], "truncated")
    rejection(png[:-12], "truncated")  # everything but IEND


def test_truncated_jpeg():
    jpeg = encode(Image.fromarray(ASTRONAUT), "JPEG")
    rejection(jpeg[: len(jpeg) // 2], "truncated")
    rejection(jpeg[:-2], "truncated")  # everything but EOI


def test_png_with_bad_crc():
    png = bytearray(encode(Image.fromarray(ASTRONAUT), "PNG"))
    png[png.index(b"IDAT") + 100] ^= 0x55
    rejection(bytes(png), "CRC", "IDAT")


def test_png_with_valid_crcs_but_corrupt_image_data():
    png = make_png(4, 4, 8, 0, extra=())
    ihdr_end = 8 + 25
    bad = png[:ihdr_end] + chunk(b"IDAT", b"\x78\x9cgarbage, not deflate") + chunk(b"IEND", b"")
    rejection(bad, "cannot be decoded")


def test_trailing_bytes_after_png_iend():
    rejection(encode(Image.fromarray(ASTRONAUT), "PNG") + b"junk", "4 bytes", "IEND")


def test_trailing_bytes_after_jpeg_eoi_motion_photo():
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(1000)
    rejection(encode(Image.fromarray(ASTRONAUT), "JPEG") + video, "EOI", "motion-photo")


def test_unknown_critical_png_chunk():
    png = insert_before_idat(encode(Image.fromarray(ASTRONAUT), "PNG"), chunk(b"CgBI", b"\x00" * 4))
    rejection(png, "critical", "CgBI")


def test_pixel_limit_uses_header_dimensions():
    png = encode(Image.fromarray(ASTRONAUT), "PNG")
    rejection(png, "512x512", max_pixels=512 * 512 - 1)
    assert probe(png, max_pixels=512 * 512).spec.width == 512


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_huge_header_with_tiny_body_is_rejected_cheaply(kind):
    if kind == "PNG":
        bomb = make_png(50000, 50000, 8, 2, raw=b"\x00" * 64)
    else:
        jpeg = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
        sof = jpeg.index(b"\xff\xc0")
        jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 50000, 50000)
        bomb = bytes(jpeg)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        rejection(bomb, "50000x50000", "pixel limit")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 100 * 2**20  # decoding would need 7.5 GB


# ---- screen: judged by the first bytes and the size, before reading it whole


def screened_out(head: bytes, size: int, max_pixels: int, *words: str) -> None:
    with pytest.raises(NotACandidate) as info:
        screen(head, size, max_pixels)
    message = str(info.value)
    assert message and "\n" not in message
    for word in words:
        assert word.lower() in message.lower(), message


def test_screen_passes_real_images_by_their_head():
    for fmt in ("PNG", "JPEG"):
        data = encode(Image.fromarray(COFFEE), fmt)
        screen(data[:HEAD_BYTES], len(data), 600 * 400)  # exactly at the limit: a candidate
        probe(data, 600 * 400)  # and probe agrees


def test_screen_names_other_formats_and_empty_files_as_probe_does():
    gif = encode(Image.fromarray(ASTRONAUT), "GIF")
    screened_out(gif[:HEAD_BYTES], len(gif), DEFAULT_MAX_PIXELS, "GIF", "only PNG and JPEG")
    screened_out(b"hello world", 11, DEFAULT_MAX_PIXELS, "not a png or jpeg")
    screened_out(b"", 0, DEFAULT_MAX_PIXELS, "empty")


def test_screen_refuses_a_png_whose_header_is_over_the_pixel_limit():
    png = encode(Image.fromarray(COFFEE), "PNG")
    screened_out(png[:HEAD_BYTES], len(png), 600 * 400 - 1, "600x400", "pixel limit")
    screened_out(png[:24], len(png), 600 * 400 - 1, "600x400")  # IHDR ends at byte 24
    screen(png[:20], len(png), 600 * 400 - 1)  # IHDR cut off: only probe can tell


def test_screen_reads_a_jpeg_frame_header_behind_big_metadata():
    jpeg = encode(Image.fromarray(COFFEE), "JPEG", exif=exif_with_orientation(6), icc_profile=SRGB_ICC)
    assert jpeg.index(b"\xff\xc0") > 500  # behind the EXIF, ICC and table segments
    screened_out(jpeg[:HEAD_BYTES], len(jpeg), 600 * 400 - 1, "600x400", "pixel limit")
    screen(jpeg[:400], len(jpeg), 600 * 400 - 1)  # the frame header is not in the head


def test_screen_refuses_files_larger_than_any_image_of_the_limit():
    limit = max_candidate_bytes(1000)
    assert limit >= 8 * 1000  # generous: room for uncompressed RGBA and metadata
    head = encode(Image.fromarray(ASTRONAUT[:10, :10]), "PNG")
    screen(head, limit, 1000)
    screened_out(head, limit + 1, 1000, "larger than", "1000 pixels")
    assert max_candidate_bytes(2000) > limit


# ---- fuzzing ---------------------------------------------------------------


def _fix_png_crcs(blob: bytearray) -> bytes:
    """Recompute every CRC so mutations reach Pillow instead of our CRC check."""
    pos = 8
    while pos + 12 <= len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        end = pos + 12 + length
        if end > len(blob):
            break
        struct.pack_into(">I", blob, end - 4, zlib.crc32(blob[pos + 4 : end - 4]))
        pos = end
    return bytes(blob)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fuzzed_inputs_only_ever_raise_not_a_candidate(fmt):
    small = Image.fromarray(ASTRONAUT[::8, ::8])
    info = PngImagePlugin.PngInfo()
    info.add_text("k", "v", zip=True)
    if fmt == "PNG":
        options = {"pnginfo": info, "icc_profile": SRGB_ICC}
    else:
        options = {"exif": exif_with_orientation(6)}
    original = encode(small, fmt, **options)
    rng = random.Random(1234)
    outcomes = {"ok": 0, "rejected": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Pillow warning must not escape either
        for attempt in range(300):
            blob = bytearray(original)
            for _ in range(rng.randint(1, 4)):
                blob[rng.randrange(len(blob))] = rng.randrange(256)
            if attempt % 10 == 0:
                del blob[rng.randrange(len(blob)) :]
            mutated = _fix_png_crcs(blob) if fmt == "PNG" and attempt % 2 else bytes(blob)
            try:
                result = probe(mutated)
            except NotACandidate as err:
                assert "\n" not in str(err)
                outcomes["rejected"] += 1
            else:
                assert isinstance(result, SourceImage)
                outcomes["ok"] += 1
    assert outcomes["rejected"] > 0  # the fuzzing did reach the error paths
