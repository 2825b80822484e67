"""Any VAE a user points at (a model, a folder, a checkpoint file) as a ``CustomAutoencoderKL``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .autoencoder_kl import CustomAutoencoderKL


def existing_path(vae: str | os.PathLike) -> Path:
    path = Path(vae)
    if not path.exists():
        raise FileNotFoundError(
            f"no such VAE file or folder: {path} (for a Hub repo, load it with "
            "CustomAutoencoderKL.from_pretrained and pass the model)"
        )
    return path


def load_vae(vae: CustomAutoencoderKL | str | os.PathLike, dtype: torch.dtype | None = None) -> CustomAutoencoderKL:
    """A ``CustomAutoencoderKL`` as is (cast in place if `dtype` is given); a model folder (ours or
    a stock ``AutoencoderKL`` one) or any single checkpoint file (through ``conversion``) is loaded,
    in `dtype` if given, else in the dtype of its weights."""
    if isinstance(vae, CustomAutoencoderKL):
        return vae if dtype is None or vae.dtype == dtype else vae.to(dtype)
    if not isinstance(vae, (str, os.PathLike)):
        raise TypeError(f"vae must be a CustomAutoencoderKL or a path, not {type(vae).__name__}")
    path = existing_path(vae)
    if path.is_dir() and (path / "config.json").is_file():
        model = CustomAutoencoderKL.from_pretrained(path, torch_dtype=dtype)
    else:
        model = CustomAutoencoderKL.from_single_file(path, torch_dtype=dtype)
    return model.eval()  # converted checkpoints come back in training mode
