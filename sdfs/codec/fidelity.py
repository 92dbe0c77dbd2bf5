"""What a fidelity measurement and a verdict are, without torch: the
container and `sdfs stats` read them from records, and neither needs the
model's libraries to do so (guard.py measures, with torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fidelity:
    psnr: float
    ssim: float

    def __str__(self) -> str:
        return f"PSNR {self.psnr:.2f} dB, SSIM {self.ssim:.4f}"


@dataclass(frozen=True)
class Floor:
    psnr: float = 23.0
    ssim: float = 0.65

    @classmethod
    def parse(cls, text: str) -> "Floor":
        """``"24"`` (PSNR only), ``"24:0.7"`` or ``"psnr=24,ssim=0.7"``."""
        try:
            if "=" in text:
                fields = dict(part.split("=", 1) for part in text.split(","))
                return cls(float(fields.pop("psnr", cls.psnr)), float(fields.pop("ssim", cls.ssim)), **fields)
            psnr, _, ssim = text.partition(":")
            return cls(float(psnr), float(ssim) if ssim else cls.ssim)
        except (TypeError, ValueError):
            raise ValueError(f"fidelity floor {text!r} is not like 24, 24:0.7 or psnr=24,ssim=0.7") from None

    def __str__(self) -> str:
        return f"PSNR {self.psnr:g} dB, SSIM {self.ssim:g}"


# the reason a verdict gives when the latent would not save space; `sdfs stats`
# and `sdfs import` count these apart from images below the fidelity floor
NOT_SMALLER = "is not smaller than the original"
BELOW_FLOOR = "is below the floor"


@dataclass(frozen=True)
class Verdict:
    keep_latent: bool
    reason: str

    @property
    def label(self) -> str:
        return "keep latent" if self.keep_latent else "keep original"
