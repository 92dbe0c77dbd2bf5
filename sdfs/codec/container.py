"""The versioned record: one image as latents plus everything needed to give
back a file of the same kind, at a byte length fixed when it was encoded.

Fields are written in one fixed order (docs/FORMAT.md lists them); nothing
depends on dict order. The record ends with a CRC-32 of all bytes before it,
so truncation and bit rot are detected before any field is trusted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from ..errors import RecordError
from .binary import Reader, Writer
from .fidelity import Fidelity
from .images import OutputSpec
from .identity import ModelIdentity, Tiling
from .output import CODINGS, JPEG, PNG_DEFLATE, PNG_STORED, OutputPlan

MAGIC = b"SDFS"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has no output coding: its PNGs are all png-stored
MAX_PIXELS = 1 << 30  # a record claiming more is corrupt or hostile, not a photo

FORMATS = {"PNG": 1, "JPEG": 2}
MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
DTYPES = {"float32": 1, "float16": 2, "bfloat16": 3}
DECODERS = {"full": 1, "tiny": 2}
QUALITY_IDS = {"high": 1, "medium": 2, "compact": 3, "low": 4}
OUTPUT_CODINGS = {PNG_STORED: 1, PNG_DEFLATE: 2, JPEG: 3}
_VERSION_1_CODING = {"PNG": PNG_STORED, "JPEG": JPEG}
_FLAG_KEEP_LATENT = 1


def _lookup(table: dict[str, int], code: int, what: str) -> str:
    for name, value in table.items():
        if value == code:
            return name
    raise RecordError(f"record has an unknown {what} code {code}")


@dataclass(frozen=True)
class Measurement:
    """Fidelity of one decoder (the one that serves reads) for this record."""

    decoder: str  # "full" or "tiny"
    decoder_sha256: bytes  # weights of that decoder, first 8 bytes
    fidelity: Fidelity


@dataclass(frozen=True)
class Record:
    model: ModelIdentity
    encode_dtype: str
    spec: OutputSpec
    tiling: Tiling
    quality: str
    output_length: int
    output_coding: str  # how outputs are written: output.CODINGS
    latent: bytes  # latents.encode_latent output
    alpha: bytes = b""  # latents-style plane coding of the alpha channel, empty when none
    keep_latent: bool = True
    measurements: tuple[Measurement, ...] = field(default_factory=tuple)

    def measurement_for(self, decoder: str) -> Measurement | None:
        return next((m for m in self.measurements if m.decoder == decoder), None)

    @property
    def output_plan(self) -> OutputPlan:
        return OutputPlan(self.output_coding, self.output_length)


def pack(record: Record) -> bytes:
    w = Writer().raw(MAGIC).u8(VERSION).u8(_FLAG_KEEP_LATENT if record.keep_latent else 0)
    model = record.model
    w.text(model.name).raw(model.weights_sha256).f32(model.scaling_factor)
    w.u8(model.latent_channels).u8(model.spatial_factor).u8(DTYPES[record.encode_dtype])
    spec = record.spec
    w.u8(FORMATS[spec.format]).u8(MODES[spec.mode]).varint(spec.width).varint(spec.height)
    w.varint(record.tiling.tile).varint(record.tiling.overlap).varint(record.tiling.stats)
    w.u8(QUALITY_IDS[record.quality])
    w.varint(record.output_length).u8(OUTPUT_CODINGS[record.output_coding])
    w.u8(len(spec.jpeg_qtables))
    for table in spec.jpeg_qtables:
        w.blob(table)
    w.u8(spec.jpeg_subsampling & 0xFF)
    w.blob(spec.metadata).blob(record.alpha)
    w.u8(len(record.measurements))
    for m in record.measurements:
        w.u8(DECODERS[m.decoder]).raw(m.decoder_sha256[:8]).f32(m.fidelity.psnr).f32(m.fidelity.ssim)
    w.blob(record.latent)
    body = w.getvalue()
    return body + zlib.crc32(body).to_bytes(4, "little")


def is_record(data: bytes) -> bool:
    return data[:4] == MAGIC


def unpack(data: bytes) -> Record:
    if len(data) < len(MAGIC) + 6 or not is_record(data):
        raise RecordError("not an sdfs record (bad magic)")
    version = data[4]
    body, stored_crc = data[:-4], int.from_bytes(data[-4:], "little")
    intact = zlib.crc32(body) == stored_crc
    if version not in READABLE_VERSIONS:
        damage = "" if intact else " (or the record is corrupt)"
        readable = " and ".join(map(str, READABLE_VERSIONS))
        raise RecordError(f"record format version {version} is not supported{damage}; "
                          f"this sdfs reads versions {readable}: upgrade sdfs")
    if not intact:
        raise RecordError("record checksum mismatch: the record is corrupt or truncated")
    record = _read_fields(Reader(body), version)
    problem = _inconsistency(record)
    if problem:
        raise RecordError(f"record is inconsistent: {problem}")
    return record


def _read_fields(r: Reader, version: int) -> Record:
    r.raw(5, "magic and version")
    flags = r.u8("flags")
    if flags & ~_FLAG_KEEP_LATENT:
        raise RecordError(f"record has unknown flags {flags:#x}")
    model = ModelIdentity(
        name=r.text("model name"),
        weights_sha256=r.raw(32, "weights hash"),
        scaling_factor=r.f32("scaling factor"),
        latent_channels=r.u8("latent channels"),
        spatial_factor=r.u8("spatial factor"),
    )
    encode_dtype = _lookup(DTYPES, r.u8("dtype"), "dtype")
    image_format = _lookup(FORMATS, r.u8("format"), "format")
    mode = _lookup(MODES, r.u8("mode"), "mode")
    width, height = r.varint("width"), r.varint("height")
    tiling = Tiling(r.varint("tile"), r.varint("overlap"), r.varint("statistics budget"))
    quality = _lookup(QUALITY_IDS, r.u8("quality"), "quality")
    output_length = r.varint("output length")
    output_coding = (_lookup(OUTPUT_CODINGS, r.u8("output coding"), "output coding") if version >= 2
                     else _VERSION_1_CODING[image_format])
    qtables = tuple(r.blob("jpeg qtable") for _ in range(r.u8("jpeg qtable count")))
    subsampling = r.u8("jpeg subsampling")
    spec = OutputSpec(
        format=image_format,
        mode=mode,
        width=width,
        height=height,
        metadata=r.blob("metadata"),
        jpeg_qtables=qtables,
        jpeg_subsampling=subsampling - 256 if subsampling > 127 else subsampling,
    )
    alpha = r.blob("alpha")
    measurements = tuple(
        Measurement(
            decoder=_lookup(DECODERS, r.u8("decoder"), "decoder"),
            decoder_sha256=r.raw(8, "decoder hash"),
            fidelity=Fidelity(psnr=r.f32("psnr"), ssim=r.f32("ssim")),
        )
        for _ in range(r.u8("measurement count"))
    )
    latent = r.blob("latent")
    r.expect_end()
    return Record(
        model=model,
        encode_dtype=encode_dtype,
        spec=spec,
        tiling=tiling,
        quality=quality,
        output_length=output_length,
        output_coding=output_coding,
        latent=latent,
        alpha=alpha,
        keep_latent=bool(flags & _FLAG_KEEP_LATENT),
        measurements=measurements,
    )


def _inconsistency(record: Record) -> str | None:
    """Fields that pass the checksum can still contradict each other (a bug, or
    a crafted record): refuse them before any of them sizes an allocation."""
    spec = record.spec
    if not 0 < spec.width * spec.height <= MAX_PIXELS:
        return f"image size {spec.width}x{spec.height}"
    if spec.format == "JPEG" and spec.mode not in ("L", "RGB"):
        return f"JPEG in mode {spec.mode}"
    if ("A" in spec.mode) != bool(record.alpha):
        return f"mode {spec.mode} with{'out' if not record.alpha else ''} an alpha plane"
    if len(spec.jpeg_qtables) > 4 or any(len(t) not in (64, 128) for t in spec.jpeg_qtables):
        return "malformed JPEG quantization tables"
    if spec.format == "PNG" and spec.jpeg_qtables:
        return "PNG with JPEG tables"
    if record.output_coding not in CODINGS[spec.format]:
        return f"{spec.format} written as {record.output_coding}"
    if record.model.spatial_factor < 1 or record.model.latent_channels < 1:
        return "model with no latent space"
    return record.tiling.problem()


def latent_shape(record: Record) -> tuple[int, int, int]:
    """(C, h, w) the record's latent must have: the padded image over the factor."""
    factor = record.model.spatial_factor
    return (record.model.latent_channels, -(-record.spec.height // factor), -(-record.spec.width // factor))
