"""Fidelity measurement and the keep-latent / keep-original decision.

The figures describe the bytes a reader will actually get: the reconstruction
from the decoder that serves reads, after output encoding, against the source
pixels. PSNR is over all colour samples; SSIM is Wang et al. (2004) with an
11x11 Gaussian window (sigma 1.5), averaged over colour channels, which is
what scikit-image's ``structural_similarity(gaussian_weights=True,
use_sample_covariance=False)`` computes; MS-SSIM (benchmarks only) uses the
five standard scales and weights.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .fidelity import BELOW_FLOOR, NOT_SMALLER, Fidelity, Floor, Verdict  # noqa: F401 (this module's interface too)

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    squared = 0
    for ref_row, test_row in zip(reference, test):  # rows keep temporaries small on 24 MP images
        diff = ref_row.astype(np.int32) - test_row.astype(np.int32)
        squared += int((diff * diff).sum(dtype=np.int64))
    mse = squared / reference.size
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor) -> torch.Tensor:
    """The 11x11 Gaussian as two 1-D passes ('valid' region only)."""
    g = _gaussian_1d()
    return F.conv2d(F.conv2d(x, g.reshape(1, 1, 1, -1)), g.reshape(1, 1, -1, 1))


def _as_planes(image: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) or (H, W, C) -> float32 (C, 1, H, W), centred on 0 so
    float32 keeps variances exact enough (checked against scikit-image)."""
    array = image if image.ndim == 3 else image[:, :, None]
    return (torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32)) - 128.0)[:, None]


def _ssim_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # centring shifts the means, so the luminance term adds the 128 back
    mu_x, mu_y = _blur(x), _blur(y)
    var_x = _blur(x * x) - mu_x**2
    var_y = _blur(y * y) - mu_y**2
    cov = _blur(x * y) - mu_x * mu_y
    mu_x, mu_y = mu_x + 128.0, mu_y + 128.0
    contrast_structure = (2 * cov + _C2) / (var_x + var_y + _C2)
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    return luminance * contrast_structure, contrast_structure


_SSIM_BAND_ROWS = 256  # output rows a band: ~50 bytes a sample of temporaries, whatever the image's height
_WINDOW = 11


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean SSIM over colour channels, one channel and one band of rows at a
    time to bound memory (each output row needs its 11 input rows: bands
    overlap by 10, and the values are those of one pass over the whole image)."""
    total = 0.0
    channels = reference.shape[2] if reference.ndim == 3 else 1
    height = reference.shape[0]
    for c in range(channels):
        plane_x = reference[..., c] if reference.ndim == 3 else reference
        plane_y = test[..., c] if test.ndim == 3 else test
        if min(plane_x.shape[:2]) < _WINDOW:  # too small for the window: stretch to one window
            x, y = (F.interpolate(_as_planes(p), size=(_WINDOW, _WINDOW)) for p in (plane_x, plane_y))
            total += float(_ssim_terms(x, y)[0].double().mean())
            continue
        rows_out = height - _WINDOW + 1
        summed = 0.0
        for first in range(0, rows_out, _SSIM_BAND_ROWS):
            last = min(first + _SSIM_BAND_ROWS, rows_out) + _WINDOW - 1
            full, _ = _ssim_terms(_as_planes(plane_x[first:last]), _as_planes(plane_y[first:last]))
            summed += float(full.double().sum())
        total += summed / (rows_out * (plane_x.shape[1] - _WINDOW + 1))
    return total / channels


def ms_ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Multi-scale SSIM (Wang, Simoncelli, Bovik 2003); needs sides >= 176."""
    x, y = _as_planes(reference), _as_planes(test)
    if min(x.shape[-2:]) < 11 * 2 ** (len(_MS_SSIM_WEIGHTS) - 1):
        raise ValueError("MS-SSIM needs images of at least 176x176 pixels")
    value = torch.ones(x.shape[0])
    for scale, weight in enumerate(_MS_SSIM_WEIGHTS):
        full, cs = _ssim_terms(x, y)
        last = scale == len(_MS_SSIM_WEIGHTS) - 1
        term = full.mean(dim=(1, 2, 3)) if last else cs.mean(dim=(1, 2, 3))
        value = value * torch.clamp(term, min=0) ** weight
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return float(value.mean())


def measure(reference: np.ndarray, test: np.ndarray) -> Fidelity:
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    return Fidelity(psnr(reference, test), ssim(reference, test))


def decide(fidelity: Fidelity, floor: Floor, record_bytes: int, original_bytes: int) -> Verdict:
    if fidelity.psnr < floor.psnr or fidelity.ssim < floor.ssim:
        return Verdict(False, f"{fidelity} {BELOW_FLOOR} ({floor})")
    if record_bytes >= original_bytes:
        return Verdict(
            False, f"the latent record ({record_bytes} B) {NOT_SMALLER} ({original_bytes} B); {fidelity}"
        )
    return Verdict(True, f"{fidelity} meets the floor ({floor}); {original_bytes} B -> {record_bytes} B")
