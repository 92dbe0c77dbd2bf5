"""The codec as a library: every candidate kind round-trips with its mode,
size, metadata and alpha; lengths are fixed; the guard decides."""

import dataclasses
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from sdfs.codec import container
from sdfs.codec.codec import Codec, output_length
from sdfs.codec.guard import Floor
from sdfs.codec.random_models import save_random_vae
from sdfs.codec.vae import Vae
from sdfs.errors import ModelMismatch, NotACandidate, RecordError
from tests.conftest import kodak_image
from tests.images_factory import CANDIDATES

ACCEPT_ALL = Floor(psnr=0, ssim=-1)


@pytest.fixture(scope="module")
def codec(tiny_vae):
    return Codec(tiny_vae, quality="high", floor=ACCEPT_ALL)


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("name", list(CANDIDATES))
def test_every_candidate_kind_round_trips(codec, name):
    source = CANDIDATES[name]()
    result = codec.encode(source)
    output = codec.decode(result.record)
    assert len(output) == result.output_length == output_length(result.record)
    original, restored = _open(source), _open(output)
    assert restored.format == original.format
    assert restored.size == original.size
    expected_mode = {"P": "RGB"}.get(original.mode, original.mode)
    assert restored.mode == expected_mode
    for key in ("exif", "icc_profile", "dpi", "Title"):
        assert restored.info.get(key) == original.info.get(key), key
    if "A" in original.mode:
        assert np.array_equal(np.asarray(restored.getchannel("A")), np.asarray(original.getchannel("A")))


def test_exif_orientation_is_kept_not_applied(codec):
    source = CANDIDATES["exif-icc.jpg"]()
    restored = _open(codec.decode(codec.encode(source).record))
    assert restored.getexif()[0x0112] == 6
    assert restored.size == (96, 64)  # pixels stay as stored; viewers rotate


def test_measured_fidelity_describes_the_served_bytes(codec):
    source = CANDIDATES["rgb.png"]()
    result = codec.encode(source)
    served = np.asarray(_open(codec.decode(result.record)))
    original = np.asarray(_open(source))
    from sdfs.codec.guard import measure

    again = measure(original, served)
    record = container.unpack(result.record)
    figures = record.measurement_for("full").fidelity
    assert figures.psnr == pytest.approx(again.psnr, abs=1e-3)
    assert figures.ssim == pytest.approx(again.ssim, abs=1e-4)


def test_guard_keeps_original_below_the_floor(tiny_vae):
    strict = Codec(tiny_vae, quality="high", floor=Floor(psnr=60, ssim=0.99))
    result = strict.encode(CANDIDATES["rgb.png"]())
    assert not result.verdict.keep_latent and "below the floor" in result.verdict.reason
    assert not container.unpack(result.record).keep_latent


def test_non_candidates_are_refused_before_any_model_work(codec):
    calls = codec.vae.decode_calls
    for data in (b"", b"GIF89a" + bytes(30), np.random.default_rng(0).bytes(5000)):
        with pytest.raises(NotACandidate):
            codec.encode(data)
    assert codec.vae.decode_calls == calls


def test_encode_many_batches_and_keeps_order(tiny_vae):
    codec = Codec(tiny_vae, quality="high", floor=ACCEPT_ALL)
    inputs = [CANDIDATES["rgb.png"](), b"not an image", CANDIDATES["gray.png"](), CANDIDATES["exif-icc.jpg"]()]
    results = codec.encode_many(inputs)
    assert isinstance(results[1], NotACandidate)
    assert [container.unpack(r.record).spec.format for r in results if not isinstance(r, NotACandidate)] == [
        "PNG",
        "PNG",
        "JPEG",
    ]
    assert results[0].record == codec.encode(inputs[0]).record


def test_another_vae_refuses_to_decode(codec, tmp_path):
    record = codec.encode(CANDIDATES["rgb.png"]()).record
    other = Codec(Vae.load(str(save_random_vae(tmp_path / "other", seed=9)), device="cpu"))
    with pytest.raises(ModelMismatch, match="record was encoded with VAE"):
        other.decode(record)


def test_compact_is_within_the_experiment_budget_at_512(factor8_vae_dir):
    """A 512x512 image gives the real 4x64x64 latent; the whole record,
    header, model id and figures included, stays <= 5 KB and <= 0.16 bpp."""
    codec = Codec(Vae.load(str(factor8_vae_dir), device="cpu"), quality="compact", floor=ACCEPT_ALL)
    crop = kodak_image(23)[:512, :512]
    out = io.BytesIO()
    Image.fromarray(crop).save(out, "PNG")
    result = codec.encode(out.getvalue())
    assert container.unpack(result.record).spec.width == 512
    assert len(result.record) <= 5000
    assert result.bpp <= 0.16


def test_fast_decoder_records_its_own_figures(tiny_vae_dir, tiny_fast_decoder_dir):
    vae = Vae.load(str(tiny_vae_dir), device="cpu")
    vae.attach_fast_decoder(str(tiny_fast_decoder_dir))
    codec = Codec(vae, quality="high", floor=ACCEPT_ALL, decoder="tiny")
    result = codec.encode(CANDIDATES["rgb.png"]())
    record = container.unpack(result.record)
    assert record.measurement_for("tiny") is not None and record.measurement_for("full") is None
    assert len(codec.decode(result.record)) == result.output_length


def test_a_bad_record_does_not_sink_its_batch(codec):
    good = codec.encode(CANDIDATES["rgb.png"]()).record
    results = codec.decode_many([good, b"SDFS" + bytes(40), good])
    assert isinstance(results[1], RecordError)
    assert results[0] == results[2] == codec.decode(good)
    # a latent of another shape is refused before it is decompressed or decoded
    calls = codec.vae.decode_calls
    record = container.unpack(good)
    other = container.pack(dataclasses.replace(record, spec=dataclasses.replace(record.spec, width=record.spec.width * 2)))
    with pytest.raises(RecordError, match="the record needs"):
        codec.decode(other)
    assert codec.vae.decode_calls == calls


def test_concurrent_decodes_match_sequential_ones(tiny_vae_dir):
    """The filesystem decodes from several threads; tiled decodes patch the
    shared model's GroupNorms, so calls must not interleave."""
    vae = Vae.load(str(tiny_vae_dir), device="cpu", max_untiled_latent=40 * 40, tile_latent=16, overlap_latent=4)
    codec = Codec(vae, quality="high", floor=ACCEPT_ALL)
    big = io.BytesIO()
    Image.fromarray(kodak_image(8)[:160, :160]).save(big, "PNG")
    records = [codec.encode(big.getvalue()).record, codec.encode(CANDIDATES["rgb.png"]()).record]
    assert container.unpack(records[0]).tiling.enabled and not container.unpack(records[1]).tiling.enabled
    expected = [codec.decode(r) for r in records]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(codec.decode, records * 4))
    assert got == expected * 4
