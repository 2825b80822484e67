"""Layer 5, evaluation: how good a VAE is (PSNR, SSIM, LPIPS, rFID), how close to a teacher, how fast, how its
latents are spread (``calibrate``), and the pictures that show it. Shared by training and ``sd-custom-vae eval``."""

from .calibrate import Calibration
from .metrics import psnr, ssim
from .quality import Report, evaluate_vaes, format_table, reconstruction_quality, teacher_agreement

__all__ = [
    "Calibration", "Report", "evaluate_vaes", "format_table", "psnr", "reconstruction_quality", "ssim",
    "teacher_agreement",
]
