"""Reconstruction quality: PSNR and SSIM on images in [-1, 1], per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..base.errors import UserError

SSIM_WINDOW = 11  # px, Wang et al.'s: SSIM is averaged over the positions where the window fits inside the image


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() + 1) / 2).clamp(0, 1)


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image, on the [0, 1] scale (peak 1)."""
    mse = (_unit(reconstruction) - _unit(target)).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def check_crop_side(side: int, flag: str, perceptual: str | None = None, instead: str = "") -> None:
    """Refuse, before any work, crops too small to measure on: SSIM's window must fit inside them, and the
    perceptual network `perceptual` ("lpips", "st_lpips") must reach its last layer. `flag` names the side;
    `instead` is the other way out of a perceptual network's limit (", or leave lpips out of --metrics")."""
    from .perceptual import LABELS, SMALLEST_SIDE

    needs = [(SSIM_WINDOW, f"SSIM: its Gaussian window is {SSIM_WINDOW} px wide", "")]
    if perceptual is not None:
        needs.append((SMALLEST_SIDE[perceptual], f"{LABELS[perceptual]}: its AlexNet shrinks smaller crops to nothing",
                      instead))
    for least, why, other in needs:
        if side < least:
            raise UserError(f"{flag} {side} is too small for {why}, so crops need at least {least} px; "
                             f"use {flag} {-(-least // 8) * 8} or more{other}")


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = 1.5) -> torch.Tensor:
    """The 1-D Gaussian; the 2-D window is its outer product, so blurring is two 1-D passes."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    return g / g.sum()


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03.

    Averaged over channels and over the positions where the window fits inside the image, which
    is what ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` computes.
    """
    x, y = _unit(reconstruction).double(), _unit(target).double()
    # the five maps blurred in one pass each way: a separable window is two 1-D convolutions, 5x fewer
    # multiplications than the 11x11 one, and float64 depthwise convolutions are slow on a CPU
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    g = _gaussian_window().to(x.device)
    blurred = F.conv2d(maps, g.view(1, 1, -1, 1).expand(maps.shape[1], 1, -1, 1), groups=maps.shape[1])
    blurred = F.conv2d(blurred, g.view(1, 1, 1, -1).expand(maps.shape[1], 1, 1, -1), groups=maps.shape[1])
    mu_x, mu_y, xx, yy, xy = blurred.chunk(5, dim=1)
    var_x, var_y, cov = xx - mu_x.square(), yy - mu_y.square(), xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1).float()
