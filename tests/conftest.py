"""Shared fixtures: tiny random VAEs saved and loaded like real ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Never let a test reach for the hub, even on a connected machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Kodak crops carried by the repository (tests/data/kodak/README.md): the tests
# need nothing beside the clone.
KODAK = Path(__file__).resolve().parent / "data" / "kodak"
KODAK_INDICES = tuple(sorted(int(p.stem.removeprefix("kodim")) for p in KODAK.glob("kodim*.png")))


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    from sdfs.codec.random_models import save_random_vae

    return save_random_vae(tmp_path_factory.mktemp("tiny-vae"))


@pytest.fixture(scope="session")
def tiny_fast_decoder_dir(tmp_path_factory) -> Path:
    from sdfs.codec.random_models import save_random_fast_decoder

    return save_random_fast_decoder(tmp_path_factory.mktemp("tiny-taesd"))


@pytest.fixture(scope="session")
def factor8_vae_dir(tmp_path_factory) -> Path:
    """Small channels but the real spatial factor (8), so a 512x512 image
    gives the real 4x64x64 latent."""
    from sdfs.codec.random_models import save_random_vae

    return save_random_vae(
        tmp_path_factory.mktemp("factor8-vae"),
        block_out_channels=(32, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )


@pytest.fixture(scope="session")
def tiny_vae(tiny_vae_dir):
    from sdfs.codec.vae import Vae

    return Vae.load(str(tiny_vae_dir), device="cpu")


def kodak_image(index: int = 23) -> np.ndarray:
    from PIL import Image

    path = KODAK / f"kodim{index:02d}.png"
    if not path.exists():  # a plain error, never a skip: a skip at import time stops collection
        raise FileNotFoundError(f"test image {path} is missing; the repository carries {KODAK_INDICES}")
    return np.asarray(Image.open(path).convert("RGB"))


def smooth_latent(seed: int = 0, shape=(4, 64, 64)) -> np.ndarray:
    """Spatially correlated values like a real latent (a blurred noise field)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=shape)
    for axis in (1, 2):
        noise = (noise + np.roll(noise, 1, axis) + np.roll(noise, -1, axis)) / 3
    return (noise * 4).astype(np.float32)


# a model identity for stores that never run a model (store, content tests)
STORE_MODEL = {"name": "tiny", "weights_sha256": "ab" * 32, "scaling_factor": 0.18215}


@pytest.fixture
def store(tmp_path):
    from sdfs.store import Store

    opened = Store(tmp_path / "store", STORE_MODEL)
    yield opened
    opened.close()
