"""Randomly initialised VAEs saved like real ones, for tests and timing.

Nothing is downloaded: models are built from a config with a fixed seed and
written with ``save_pretrained``, so they load through exactly the path users
take (``Vae.load(folder)``). Random weights make ugly images; they are for
mechanics and timing, never for quality figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .vae import BUNDLED_CONFIG_DIR

TINY_KL = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    layers_per_block=1,
    norm_num_groups=32,
    latent_channels=4,
)
TINY_TAESD = dict(
    encoder_block_out_channels=(16, 16),
    decoder_block_out_channels=(16, 16),
    num_encoder_blocks=(1, 1),
    num_decoder_blocks=(1, 1),
    latent_channels=4,
)


def save_random_vae(folder: str | Path, size: str = "tiny", seed: int = 0, **overrides) -> Path:
    """``size`` "tiny" (32/64 channels, factor 2) or "full" (the
    sd-vae-ft-mse architecture, 83.7 M parameters, factor 8)."""
    from diffusers import AutoencoderKL

    config = dict(TINY_KL) if size == "tiny" else json.loads((BUNDLED_CONFIG_DIR / "config.json").read_text())
    config = {k: v for k, v in {**config, **overrides}.items() if not k.startswith("_")}
    torch.manual_seed(seed)
    AutoencoderKL(**config).save_pretrained(str(folder))
    return Path(folder)


def save_random_fast_decoder(folder: str | Path, seed: int = 0, **overrides) -> Path:
    """A tiny AutoencoderTiny matching the tiny KL's latent space shape."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(**{**TINY_TAESD, **overrides}).save_pretrained(str(folder))
    return Path(folder)
