"""Layer 5, evaluation: how good a VAE is (PSNR, SSIM, LPIPS, rFID), how close to a teacher, how fast, how its
latents are spread (``calibrate``), and the pictures that show it. Shared by training and ``sd-custom-vae eval``."""

import importlib

_EXPORTS = {
    "evaluate_vaes": "quality", "format_table": "quality", "Report": "quality", "reconstruction_quality": "quality",
    "teacher_agreement": "quality", "Calibration": "calibrate", "psnr": "metrics", "ssim": "metrics",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
