import dataclasses

import numpy as np
import pytest

from sdfs.codec import container
from sdfs.codec.container import Measurement, Record
from sdfs.codec.guard import Fidelity
from sdfs.codec.images import OutputSpec
from sdfs.codec.vae import ModelIdentity, Tiling
from sdfs.errors import RecordError


def _record(**changes) -> Record:
    base = Record(
        model=ModelIdentity("stabilityai/sd-vae-ft-mse", bytes(range(32)), 0.18215, 4, 8),
        encode_dtype="float16",
        spec=OutputSpec("JPEG", "RGB", 768, 512, b"\xff\xe1\x00\x04ab", (bytes(64), bytes(range(64))), 2),
        tiling=Tiling(64, 8, 16384),
        quality="compact",
        output_length=123_456,
        output_coding="jpeg",
        latent=b"latent-bytes",
        alpha=b"",
        measurements=(Measurement("full", b"12345678", Fidelity(25.5, 0.75)),),
    )
    return dataclasses.replace(base, **changes)


def test_round_trip_keeps_every_field():
    record = _record()
    restored = container.unpack(container.pack(record))
    assert restored.model.scaling_factor == pytest.approx(0.18215)
    assert dataclasses.replace(restored, model=record.model, measurements=record.measurements) == record
    assert restored.measurements[0].fidelity.psnr == pytest.approx(25.5)
    png = _record(spec=OutputSpec("PNG", "LA", 3, 2, b""), output_coding="png-deflate", alpha=b"\x01\x02",
                  keep_latent=False)
    assert container.unpack(container.pack(png)).spec == png.spec
    assert not container.unpack(container.pack(png)).keep_latent


def test_header_starts_with_magic_and_version():
    data = container.pack(_record())
    assert data[:4] == b"SDFS" and data[4] == container.VERSION


def test_unknown_version_is_refused_clearly():
    data = bytearray(container.pack(_record()))
    data[4] = 99
    with pytest.raises(RecordError, match="version 99 is not supported"):
        container.unpack(bytes(data))


def test_every_truncation_and_bit_flip_is_detected():
    data = container.pack(_record())
    for cut in range(len(data)):
        with pytest.raises(RecordError):
            container.unpack(data[:cut])
    rng = np.random.default_rng(0)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(RecordError):
            container.unpack(bytes(damaged))


def test_not_a_record():
    with pytest.raises(RecordError, match="bad magic"):
        container.unpack(b"\x89PNG\r\n\x1a\n" + bytes(100))


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(tiling=Tiling(64, 64, 16384)), "impossible tiling"),
        (dict(tiling=Tiling(0, 8, 0)), "untiled record with tile settings"),
        (dict(spec=OutputSpec("JPEG", "RGBA", 8, 8, b"")), "JPEG in mode RGBA"),
        (dict(spec=OutputSpec("PNG", "RGBA", 8, 8, b"")), "without an alpha plane"),
        (dict(spec=OutputSpec("PNG", "RGB", 70000, 70000, b"")), "image size"),
        (dict(spec=OutputSpec("JPEG", "RGB", 8, 8, b"", (bytes(64),) * 5, 2)), "quantization tables"),
        (dict(output_coding="png-deflate"), "JPEG written as png-deflate"),
        (dict(spec=OutputSpec("PNG", "RGB", 8, 8, b""), output_coding="jpeg"), "PNG written as jpeg"),
    ],
)
def test_records_with_a_valid_checksum_but_contradictory_fields_are_refused(changes, reason):
    """A bug or a crafted file must not reach an allocation or a forward pass."""
    with pytest.raises(RecordError, match=reason):
        container.unpack(container.pack(_record(**changes)))


def test_unknown_flags_are_refused():
    data = bytearray(container.pack(_record()))
    data[5] |= 0x80
    body = bytes(data[:-4])
    import zlib

    with pytest.raises(RecordError, match="unknown flags"):
        container.unpack(body + zlib.crc32(body).to_bytes(4, "little"))


def _as_version_1(record: Record) -> bytes:
    """The record as sdfs wrote it before output codings: version 1, and no
    coding byte after the output length."""
    import zlib

    from sdfs.codec.binary import Writer

    body = bytearray(container.pack(record)[:-4])
    length_then_coding = Writer().varint(record.output_length).getvalue() + bytes(
        [container.OUTPUT_CODINGS[record.output_coding]])
    assert body.count(length_then_coding) == 1
    del body[body.index(length_then_coding) + len(length_then_coding) - 1]
    body[4] = 1
    return bytes(body) + zlib.crc32(body).to_bytes(4, "little")


@pytest.mark.parametrize("fmt, coding", [("PNG", "png-stored"), ("JPEG", "jpeg")])
def test_version_1_records_are_read_with_the_coding_they_were_written_with(fmt, coding):
    spec = OutputSpec(fmt, "RGB", 768, 512, b"", (bytes(64),) if fmt == "JPEG" else (), 2)
    record = _record(spec=spec, output_coding=coding)
    old = _as_version_1(record)
    assert old[4] == 1 and len(old) == len(container.pack(record)) - 1
    restored = container.unpack(old)
    assert restored.output_coding == coding and restored.output_plan.length == 123_456
    assert dataclasses.replace(restored, model=record.model, measurements=record.measurements) == record
