import time

import numpy as np
import pytest
import torch

from sdfs.codec.guard import psnr
from sdfs.codec.random_models import save_random_vae
from sdfs.codec.vae import Tiling, Vae
from sdfs.errors import ModelMismatch, ModelUnavailable
from tests.conftest import kodak_image


def test_load_from_folder_and_single_file_agree(tiny_vae_dir):
    from_folder = Vae.load(str(tiny_vae_dir), device="cpu")
    weights = tiny_vae_dir / "diffusion_pytorch_model.safetensors"
    from_file = Vae.load(str(weights), device="cpu")
    assert from_folder.identity.weights_sha256 == from_file.identity.weights_sha256
    assert from_folder.identity.spatial_factor == 2  # derived from the config, not a literal 8
    assert from_folder.identity.latent_channels == 4


def test_fingerprint_separates_weights(tmp_path):
    a = Vae.load(str(save_random_vae(tmp_path / "a", seed=1)), device="cpu")
    b = Vae.load(str(save_random_vae(tmp_path / "b", seed=2)), device="cpu")
    assert a.identity.weights_sha256 != b.identity.weights_sha256
    with pytest.raises(ModelMismatch, match="decode with --model"):
        a.identity.require_same_latent_space(b.identity)


def test_offline_hub_id_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        Vae.load("stabilityai/sd-vae-ft-mse", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and "hf download stabilityai/sd-vae-ft-mse" in message
    assert time.monotonic() - started < 20


def test_missing_path_and_garbage_file(tmp_path):
    with pytest.raises(ModelUnavailable, match="neither a file"):
        Vae.load(str(tmp_path / "nope"), device="cpu")
    junk = tmp_path / "vae.safetensors"
    junk.write_bytes(b"not weights")
    with pytest.raises(ModelUnavailable, match="cannot load VAE"):
        Vae.load(str(junk), device="cpu")


def test_odd_sizes_are_padded_and_cropped(tiny_vae):
    image = kodak_image(3)[:37, :51]
    ((latent, tiling),) = tiny_vae.encode([image])
    assert latent.shape == (4, 19, 26) and not tiling.enabled
    (decoded,) = tiny_vae.decode([(latent, tiling, (37, 51))])
    assert decoded.shape == (37, 51, 3) and decoded.dtype == np.uint8


def test_encoding_is_deterministic_and_batching_does_not_change_results(tiny_vae_dir):
    vae = Vae.load(str(tiny_vae_dir), device="cpu", batch_size=4)
    images = [kodak_image(i)[:64, :96] for i in (1, 2, 3)] + [kodak_image(4)[:40, :40]]
    batched = vae.encode(images)
    single = [vae.encode([image])[0] for image in images]
    for (a, _), (b, _) in zip(batched, single):
        np.testing.assert_allclose(a, b, atol=1e-4)
    calls = vae.decode_calls
    vae.decode([(latent, tiling, image.shape[:2]) for (latent, tiling), image in zip(batched, images)])
    assert vae.decode_calls - calls == 2  # one pass for the three 64x96 images, one for 40x40


@pytest.mark.parametrize("attention, floor_db", [(False, 33), (True, 20)])
def test_tiled_decode_matches_untiled(tmp_path, attention, floor_db):
    """Input 4x larger than a tile in each direction, so tiling really happens.

    GroupNorm statistics are shared across tiles (here taken at full
    resolution, since the image is small), so without the mid-block attention
    only the convolutions' edges differ and tiles blend to within 33 dB. The
    attention block sees one tile instead of the whole image: with random
    weights that costs more than a trained model (bench/tiling_fidelity.py
    measures a briefly trained one).
    """
    folder = save_random_vae(tmp_path / "vae", mid_block_add_attention=attention)
    vae = Vae.load(str(folder), device="cpu", batch_size=4, max_untiled_latent=128 * 192)
    image = kodak_image(23)[:256, :384]
    ((latent, _),) = vae.encode([image])  # latent 128x192; tiles of 32 with overlap 8
    untiled = vae.decode([(latent, Tiling(), (256, 384))])[0]
    before = vae.decode_calls
    tiled = vae.decode([(latent, Tiling(32, 8, stats=128 * 192), (256, 384))])[0]
    assert vae.decode_calls - before == 1 + 10  # statistics pass + 8x5 tiles in batches of 4
    assert tiled.shape == untiled.shape
    assert psnr(untiled, tiled) > floor_db


def test_tiles_are_blended_without_seams():
    """The blending itself is exact for a purely local operation."""
    from sdfs.codec.vae import run_tiled

    x = torch.randn(1, 3, 50, 70)
    local = torch.nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        reference = local(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        tiled = run_tiled(lambda t: local(torch.nn.functional.interpolate(t, scale_factor=2)), x, 16, 6, 2, 3)
    interior_error = (tiled - reference)[..., 1:-1, 1:-1].abs()
    # only the 1-pixel conv halo at inner tile edges differs, and ramps weight it down
    assert interior_error.mean() < 0.02 and tiled.shape == reference.shape


def test_large_images_are_encoded_in_tiles(tmp_path, monkeypatch):
    folder = save_random_vae(tmp_path / "vae", mid_block_add_attention=False)
    vae = Vae.load(str(folder), device="cpu", tile_latent=32, overlap_latent=8)
    image = kodak_image(23)[:256, :256]
    reference = vae.encode([image])[0][0]
    # force tiling while the statistics pass still sees the whole image
    monkeypatch.setattr(vae, "tiling_for", lambda height, width: vae.default_tiling)
    ((tiled, tiling),) = vae.encode([image])
    assert tiling == Tiling(32, 8, 128 * 128) and tiled.shape == reference.shape == (4, 128, 128)
    correlation = np.corrcoef(tiled.ravel(), reference.ravel())[0, 1]
    assert correlation > 0.99


def test_tiling_threshold(tiny_vae_dir):
    vae = Vae.load(str(tiny_vae_dir), device="cpu", max_untiled_latent=50 * 50, tile_latent=32, overlap_latent=8)
    assert not vae.tiling_for(100, 100).enabled  # factor 2: a 50x50 latent
    assert vae.tiling_for(102, 100) == Tiling(32, 8, 50 * 50)


def test_fast_decoder_shares_the_latent_space(tiny_vae_dir, tiny_fast_decoder_dir):
    vae = Vae.load(str(tiny_vae_dir), device="cpu")
    vae.attach_fast_decoder(str(tiny_fast_decoder_dir))
    image = kodak_image(2)[:64, :64]
    ((latent, tiling),) = vae.encode([image])
    (fast,) = vae.decode([(latent, tiling, (64, 64))], fast=True)
    assert fast.shape == (64, 64, 3)
    assert vae.fast_decoder.weights_sha256 != vae.identity.weights_sha256


def test_fp16_overflow_falls_back_to_fp32(tiny_vae_dir, monkeypatch):
    vae = Vae.load(str(tiny_vae_dir), device="cpu", dtype=torch.bfloat16)
    calls = []

    def flaky(module, t):
        calls.append(t.dtype)
        return torch.full((1, 3, 4, 4), float("inf")) if t.dtype != torch.float32 else torch.zeros(1, 3, 4, 4)

    out = vae._run_checked(vae.model, flaky, torch.zeros(1, 4, 2, 2))
    assert calls == [torch.bfloat16, torch.float32] and torch.isfinite(out).all()


def test_a_readers_tiled_decode_holds_the_model_through_its_tiles(tiny_vae_dir):
    """The encoder's lanes give the model back after every pass; a reader
    (the foreground) keeps it through all the tiles of its image, so it waits
    for the pass in progress at most, not once per tile."""
    import threading

    vae = Vae.load(str(tiny_vae_dir), device="cpu", max_untiled_latent=40 * 40, tile_latent=16, overlap_latent=4)
    image = kodak_image(8)[:160, :160]
    ((latent, tiling),) = vae.encode([image])
    assert tiling.enabled
    passes, stop = [], threading.Event()
    run_checked = vae._run_checked

    def noted(*args):  # noted when done: passes run one at a time, so this is their order
        out = run_checked(*args)
        passes.append(threading.current_thread().name)
        return out

    vae._run_checked = noted

    def encoder_lane():
        with vae.background_work():
            while not stop.is_set():
                vae.encode([image[:32, :32]])

    lane = threading.Thread(target=encoder_lane, name="lane")
    lane.start()
    try:
        while passes.count("lane") < 3:  # the lane is busy
            threading.Event().wait(0.01)
        vae.decode([(latent, tiling, (160, 160))])
    finally:
        stop.set()
        lane.join()
    mine = [i for i, name in enumerate(passes) if name == threading.current_thread().name]
    assert len(mine) > 10  # the statistics pass and the tiles
    assert passes[mine[0] : mine[-1] + 1].count("lane") == 0, passes[mine[0] : mine[-1] + 1]


def test_a_float32_fallback_pass_keeps_the_images_statistics(tiny_vae_dir):
    """A tile whose half-precision pass overflows is computed again on a
    float32 twin of the model: with the whole image's GroupNorm statistics,
    not the tile's own (which would show as a tile of another brightness)."""
    from sdfs.codec.vae import SharedGroupNorm

    vae = Vae.load(str(tiny_vae_dir), device="cpu")
    z = torch.randn(1, vae.identity.latent_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    tile = z[..., :16, :16]
    norms = SharedGroupNorm(vae.model.decoder)
    with torch.inference_mode():
        with norms.recording():
            vae.model.decode(z)
        with norms.applying():
            expected = vae.model.decode(tile).sample
            twin = vae._fp32_copy(vae.model)  # copied while patched, as in a pass
            with SharedGroupNorm.mirrored(vae.model, twin):
                mirrored = twin.decode(tile).sample
        own_statistics = twin.decode(tile).sample
    assert torch.allclose(mirrored, expected, atol=1e-5)
    assert not torch.allclose(own_statistics, expected, atol=1e-2)
