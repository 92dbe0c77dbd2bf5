import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sdfs.codec import guard
from tests.conftest import kodak_image


def _noisy(image, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_ssim_matches_scikit_image():
    image = kodak_image(5)
    for sigma in (3, 12, 40):
        other = _noisy(image, sigma)
        reference = structural_similarity(
            image, other, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert guard.ssim(image, other) == pytest.approx(reference, abs=1e-6)


def test_psnr_values():
    image = kodak_image(5)
    assert guard.psnr(image, image) == math.inf
    shifted = image.astype(np.int16) + 4
    assert guard.psnr(np.full((8, 8), 100, np.uint8), np.full((8, 8), 104, np.uint8)) == pytest.approx(
        10 * math.log10(255**2 / 16)
    )
    assert shifted is not None


def test_ms_ssim_orders_distortions():
    image = kodak_image(7)
    values = [guard.ms_ssim(image, _noisy(image, sigma)) for sigma in (2, 10, 30)]
    assert 1.0 > values[0] > values[1] > values[2] > 0
    assert guard.ms_ssim(image, image) == pytest.approx(1.0)


def test_floor_parsing():
    assert guard.Floor.parse("24") == guard.Floor(24.0, guard.Floor.ssim)
    assert guard.Floor.parse("24:0.7") == guard.Floor(24.0, 0.7)
    assert guard.Floor.parse("psnr=20,ssim=0.5") == guard.Floor(20.0, 0.5)
    with pytest.raises(ValueError, match="not like"):
        guard.Floor.parse("good")


def test_decision():
    floor = guard.Floor(24, 0.7)
    good, bad = guard.Fidelity(30, 0.9), guard.Fidelity(20, 0.9)
    assert guard.decide(good, floor, 5000, 100_000).keep_latent
    below = guard.decide(bad, floor, 5000, 100_000)
    assert not below.keep_latent and "below the floor" in below.reason
    bigger = guard.decide(good, floor, 5000, 4000)
    assert not bigger.keep_latent and "not smaller" in bigger.reason
