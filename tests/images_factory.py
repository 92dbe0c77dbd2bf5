"""Candidate images of every kind, made in code (nothing downloaded)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageCms

from tests.conftest import kodak_image


def _png(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return out.getvalue()


def _photo(size=(96, 64)) -> Image.Image:
    return Image.fromarray(kodak_image(23)[100 : 100 + size[1], 200 : 200 + size[0]])


def rgb_png() -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "parrots")
    return _png(_photo(), pnginfo=info, dpi=(300, 300))


def gray_png() -> bytes:
    return _png(_photo().convert("L"))


def palette_png() -> bytes:
    return _png(_photo().quantize(64))


def rgba_png() -> bytes:
    image = _photo().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, image.width, dtype=np.uint8), (image.height, 1))
    image.putalpha(Image.fromarray(alpha))
    return _png(image)


def gray_alpha_png() -> bytes:
    image = _photo().convert("LA")
    return _png(image)


def jpeg_with_exif_and_icc() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    exif[0x010F] = "sdfs test camera"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    _photo().save(out, "JPEG", quality=88, exif=exif.tobytes(), icc_profile=icc)
    return out.getvalue()


def gray_jpeg() -> bytes:
    out = io.BytesIO()
    _photo().convert("L").save(out, "JPEG", quality=75)
    return out.getvalue()


CANDIDATES = {
    "rgb.png": rgb_png,
    "gray.png": gray_png,
    "palette.png": palette_png,
    "rgba.png": rgba_png,
    "gray-alpha.png": gray_alpha_png,
    "exif-icc.jpg": jpeg_with_exif_and_icc,
    "gray.jpg": gray_jpeg,
}
