import numpy as np
import pytest

from sdfs.codec import latents
from sdfs.errors import RecordError
from tests.conftest import smooth_latent


@pytest.mark.parametrize("name", list(latents.QUALITIES))
def test_round_trip_shape_and_error(name):
    latent = smooth_latent()
    decoded = latents.decode_latent(latents.encode_latent(latent, name))
    assert decoded.shape == latent.shape and decoded.dtype == np.float32
    q = latents.QUALITIES[name]
    span = latent.reshape(4, -1).max(1) - latent.reshape(4, -1).min(1)
    error = np.abs(decoded - latent).reshape(4, -1).max(1)
    if q.method == "scalar":
        # scalar quantization is exact to half a step, outliers included
        assert np.all(error <= span / (2**q.level - 1) / 2 * 1.001)
    else:
        # a palette cannot bound each value, but must keep most of the signal
        rms = np.sqrt(np.mean((decoded - latent) ** 2))
        assert rms < 0.5 * latent.std()


def test_sizes_and_errors_fall_and_rise_with_quality():
    latent = smooth_latent()
    sizes, errors = {}, {}
    for name in latents.QUALITIES:
        blob = latents.encode_latent(latent, name)
        sizes[name] = len(blob)
        errors[name] = float(np.mean((latents.decode_latent(blob) - latent) ** 2))
    assert sizes["high"] > sizes["medium"] > sizes["compact"] > sizes["low"]
    assert errors["high"] < errors["medium"] < errors["compact"] < errors["low"]


def test_compact_bound_holds_for_incompressible_latents():
    """White noise is the worst case: 4096 indices of 8 bits plus the palette."""
    noise = np.random.default_rng(1).normal(size=(4, 64, 64)).astype(np.float32)
    blob = latents.encode_latent(noise, "compact")
    assert len(blob) <= 64 * 64 + 256 * 4 + 64


def test_encoding_is_deterministic():
    latent = smooth_latent(3)
    assert latents.encode_latent(latent, "compact") == latents.encode_latent(latent.copy(), "compact")


def test_dithering_keeps_local_means():
    """Error diffusion spreads the quantization error instead of biasing it:
    block means stay closer to the source than plain nearest-colour mapping."""
    latent = smooth_latent(5)
    blob = latents.encode_latent(latent, "low")
    decoded = latents.decode_latent(blob)
    block = lambda a: a.reshape(4, 16, 4, 16, 4).mean(axis=(2, 4))  # noqa: E731
    assert np.abs(block(decoded) - block(latent)).mean() < np.abs(decoded - latent).mean()


def test_constant_channel_and_tiny_latent():
    latent = np.zeros((4, 1, 1), np.float32)
    latent[2] = 7.5
    for name in latents.QUALITIES:
        np.testing.assert_allclose(latents.decode_latent(latents.encode_latent(latent, name)), latent, atol=1e-4)


def test_corrupt_payloads_raise_record_error_only():
    blob = latents.encode_latent(smooth_latent(), "medium")
    rng = np.random.default_rng(0)
    for cut in range(0, len(blob), 97):
        with pytest.raises(RecordError):
            latents.decode_latent(blob[:cut])
    for _ in range(200):
        damaged = bytearray(blob)
        damaged[rng.integers(len(blob))] ^= 1 << int(rng.integers(8))
        try:
            latents.decode_latent(bytes(damaged))
        except RecordError:
            pass  # the only acceptable failure; the container's CRC catches the rest


def test_alpha_plane_is_lossless():
    plane = (np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)
    assert np.array_equal(latents.decode_plane(latents.encode_plane(plane), 300, 200), plane)


def test_unknown_quality_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        latents.encode_latent(smooth_latent(), "ultra")
