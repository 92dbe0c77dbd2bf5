"""Images in, records out, and back: the codec as a library.

    codec = Codec(Vae.load("stabilityai/sd-vae-ft-mse"))
    result = codec.encode(open("photo.jpg", "rb").read())   # NotACandidate for non-images
    if result.verdict.keep_latent:
        store(result.record)
    image_bytes = codec.decode(result.record)   # exactly result.output_length bytes

Encoding decodes once with the decoder that will serve reads and measures the
output the reader will get; the verdict says whether the latent is good enough.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import NotACandidate, SdfsError
from . import container, guard, images, latents, output
from .container import Measurement, Record
from .guard import Fidelity, Floor, Verdict
from .images import SourceImage
from .vae import Vae

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeResult:
    record: bytes
    verdict: Verdict
    fidelity: Fidelity
    output_length: int
    original_length: int
    pixels: int

    @property
    def bpp(self) -> float:
        """Bits per pixel of the whole record (header, metadata and alpha included)."""
        return len(self.record) * 8 / self.pixels


def to_mode(rgb: np.ndarray, mode: str) -> np.ndarray:
    """Decoder RGB (H, W, 3) -> the colour planes of ``mode`` (grayscale by
    Pillow's own ITU-R 601 integer formula, so it matches ``convert("L")``)."""
    if mode in ("L", "LA"):
        r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
        return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]
    return rgb


def _served_pixels(output_bytes: bytes, spec, pixels: np.ndarray) -> np.ndarray:
    """The colour planes a reader gets from the output bytes: ``pixels``
    themselves for a PNG (written losslessly, and the first output is never
    coarsened: it is what the length was planned from), decoded for a JPEG."""
    if spec.format == "PNG":
        return pixels
    with Image.open(io.BytesIO(output_bytes)) as im:
        array = np.asarray(im.convert("L" if spec.mode in ("L", "LA") else "RGB"))
    return array if array.ndim == 3 else array[..., None]


class Codec:
    def __init__(
        self,
        vae: Vae,
        quality: str = latents.DEFAULT_QUALITY,
        floor: Floor = Floor(),
        decoder: str = "full",
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
    ):
        latents.quality(quality)  # validate early
        if decoder not in container.DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; use full or tiny")
        if decoder == "tiny" and vae.fast_decoder is None:
            vae.attach_fast_decoder()
        self.vae = vae
        self.quality = quality
        self.floor = floor
        self.decoder = decoder
        self.max_pixels = max_pixels

    # -- encode

    def probe(self, data: bytes) -> SourceImage:
        return images.probe(data, self.max_pixels)

    def encode(self, data: bytes) -> EncodeResult:
        """Raises NotACandidate when the bytes must be stored verbatim."""
        (result,) = self.encode_many([data])
        if isinstance(result, SdfsError):
            raise result
        return result

    def encode_many(self, blobs: Sequence[bytes]) -> list[EncodeResult | SdfsError]:
        """Encode many files with batched forward passes (one per shape group).
        Items that fail come back as their error (NotACandidate for non-images)."""
        results: list = [None] * len(blobs)
        sources: dict[int, SourceImage] = {}
        for index, data in enumerate(blobs):
            try:
                sources[index] = self.probe(data)
            except NotACandidate as reason:
                results[index] = _detached(reason)
        order = list(sources)
        encoded = self.vae.encode([sources[i].pixels for i in order])
        payloads = [latents.encode_latent(latent, self.quality) for latent, _ in encoded]
        decoded = self.vae.decode(
            [
                (latents.decode_latent(payload, latent.shape), tiling, (sources[i].spec.height, sources[i].spec.width))
                for i, payload, (latent, tiling) in zip(order, payloads, encoded)
            ],
            fast=self.decoder == "tiny",
        )
        for i, payload, (_, tiling), rgb in zip(order, payloads, encoded, decoded):
            try:
                results[i] = self._finish(blobs[i], sources[i], payload, tiling, rgb)
            except SdfsError as error:  # one bad item must not sink its batch
                results[i] = _detached(error)
        return results

    def _finish(self, data: bytes, source: SourceImage, payload: bytes, tiling, rgb: np.ndarray) -> EncodeResult:
        spec = source.spec
        pixels = to_mode(rgb, spec.mode)
        plan, first_output = output.plan_output(spec, pixels, source.alpha)
        fidelity = guard.measure(source.pixels, _served_pixels(first_output, spec, pixels))
        record = Record(
            model=self.vae.identity,
            encode_dtype=self.vae.dtype_name,
            spec=spec,
            tiling=tiling,
            quality=self.quality,
            output_length=plan.length,
            output_coding=plan.coding,
            latent=payload,
            alpha=b"" if source.alpha is None else latents.encode_plane(source.alpha),
            measurements=(Measurement(self.decoder, self._decoder_hash(), fidelity),),
        )
        packed = container.pack(record)
        verdict = guard.decide(fidelity, self.floor, len(packed), len(data))
        if not verdict.keep_latent:
            # the flag is one byte inside the checksummed body, so pack again
            packed = container.pack(dataclasses.replace(record, keep_latent=False))
        return EncodeResult(packed, verdict, fidelity, plan.length, len(data), spec.width * spec.height)

    def _decoder_hash(self) -> bytes:
        if self.decoder == "tiny":
            return self.vae.fast_decoder.weights_sha256
        return self.vae.identity.weights_sha256

    # -- decode

    def decode(self, record_bytes: bytes) -> bytes:
        (result,) = self.decode_many([record_bytes])
        if isinstance(result, SdfsError):
            raise result
        return result

    def decode_many(self, records: Sequence[bytes]) -> list[bytes | SdfsError]:
        """Records -> image files, each exactly its recorded output length.
        Records that fail (corrupt, another model) come back as their error."""
        results: list = [None] * len(records)
        ready: dict[int, tuple[Record, np.ndarray]] = {}
        for index, data in enumerate(records):
            try:
                record = container.unpack(data)
                self.vae.identity.require_same_latent_space(record.model)
                ready[index] = (record, latents.decode_latent(record.latent, container.latent_shape(record)))
            except SdfsError as error:
                results[index] = _detached(error)
                continue
            if record.measurement_for(self.decoder) is None:
                log.warning(
                    "record has no fidelity figures for the %s decoder; its guard figures describe %s",
                    self.decoder,
                    ", ".join(m.decoder for m in record.measurements) or "no decoder",
                )
        order = list(ready)
        decoded = self.vae.decode(
            [(ready[i][1], ready[i][0].tiling, (ready[i][0].spec.height, ready[i][0].spec.width)) for i in order],
            fast=self.decoder == "tiny",
        )
        for index, rgb in zip(order, decoded):
            spec = ready[index][0].spec
            record = ready[index][0]
            try:
                alpha = latents.decode_plane(record.alpha, spec.height, spec.width) if record.alpha else None
                results[index] = output.render_output(spec, to_mode(rgb, spec.mode), alpha, record.output_plan)
            except SdfsError as error:
                results[index] = _detached(error)
        return results


def output_length(record_bytes: bytes) -> int:
    """The byte length every decode of this record returns, without decoding."""
    return container.unpack(record_bytes).output_length


def _detached(error: SdfsError) -> SdfsError:
    """An error kept as a result, without its traceback and causes: their
    frames hold the batch's bytes, in a reference cycle that only a full
    garbage collection frees (2 GB kept alive per 2 GB file, measured)."""
    error.__cause__ = error.__context__ = None
    return error.with_traceback(None)
