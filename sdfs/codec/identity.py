"""What ties a record to the network that made it and how it was tiled,
without torch: records are read (container.py, `sdfs stats`, `fsck`) by
commands that never run the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelMismatch


@dataclass(frozen=True)
class Tiling:
    """Tile geometry in *latent* pixels; ``tile == 0`` means untiled.

    ``stats`` is the latent-pixel budget of the GroupNorm statistics pass (see
    SharedGroupNorm). All three are recorded in every record so a later decode
    works exactly as the encode-time one did, whatever the decoding build's
    defaults.
    """

    tile: int = 0
    overlap: int = 0
    stats: int = 0

    @property
    def enabled(self) -> bool:
        return self.tile > 0

    def problem(self) -> str | None:
        """Why these settings cannot be used, or None (records are untrusted input)."""
        if self.tile == 0:
            return None if self.overlap == self.stats == 0 else "untiled record with tile settings"
        if self.tile < 8 or not 0 <= 2 * self.overlap < self.tile or self.stats < 64:
            return f"impossible tiling {self.tile}/{self.overlap}/{self.stats}"
        return None


@dataclass(frozen=True)
class ModelIdentity:
    """What ties a latent to the network that made it."""

    name: str  # hub id[@revision], or the file/folder name it was loaded from
    weights_sha256: bytes  # over every tensor of the state dict, see fingerprint()
    scaling_factor: float
    latent_channels: int
    spatial_factor: int

    @property
    def short_hash(self) -> str:
        return self.weights_sha256.hex()[:12]

    def describe(self) -> str:
        return f"{self.name} (weights {self.short_hash}, scaling {self.scaling_factor:g})"

    def require_same_latent_space(self, other: "ModelIdentity") -> None:
        if (self.weights_sha256, self.latent_channels, self.spatial_factor) != (
            other.weights_sha256,
            other.latent_channels,
            other.spatial_factor,
        ) or not np.isclose(self.scaling_factor, other.scaling_factor):
            raise ModelMismatch(
                f"record was encoded with VAE {other.describe()} but the loaded VAE is "
                f"{self.describe()}; decode with --model pointing at the original weights"
            )
