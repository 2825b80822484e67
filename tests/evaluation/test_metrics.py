import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from sd_custom_vae.evaluation.metrics import SSIM_WINDOW, check_crop_side, psnr, ssim


def test_psnr_known_value():
    target = torch.zeros(1, 3, 8, 8)  # 0.5 grey on the [0, 1] scale
    reconstruction = target + 0.2  # 0.1 off on the [0, 1] scale: MSE 0.01 → 20 dB
    assert psnr(reconstruction, target).item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_matches_scikit_image():
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 48, 40, generator=generator) * 2 - 1
    noisy = (target + 0.3 * torch.randn(target.shape, generator=generator)).clamp(-1, 1)
    ours = ssim(noisy, target)
    for i in range(2):
        reference = structural_similarity(
            ((noisy[i] + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64),
            ((target[i] + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64),
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2,
        )
        assert ours[i].item() == pytest.approx(reference, abs=1e-5)
    assert ssim(target, target).min().item() == pytest.approx(1.0)


def test_crops_too_small_for_ssim_are_refused_by_name_and_the_bound_is_exact():
    image = torch.zeros(1, 3, SSIM_WINDOW, SSIM_WINDOW)
    ssim(image, image)
    with pytest.raises(RuntimeError):
        ssim(image[..., 1:, 1:], image[..., 1:, 1:])
    check_crop_side(SSIM_WINDOW, "--resolution")
    with pytest.raises(ValueError, match="--resolution 10 is too small for SSIM.*at least 11 px; use --resolution 16"):
        check_crop_side(SSIM_WINDOW - 1, "--resolution")
