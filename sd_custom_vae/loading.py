"""Any VAE a user names (a model, a folder, a run, a pipeline, a checkpoint file, a Hub name) as a ``CustomAutoencoderKL``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

import conversion

from . import run_files
from .autoencoder_kl import CustomAutoencoderKL
from .model_sources import PIPELINE_INDEX, locate


def model_path(path: Path) -> Path:
    """The model folder a path stands for: a training run's ``model/``, a pipeline folder's ``vae/``, or itself."""
    if (path / run_files.MODEL_DIR / conversion.CONFIG_NAME).is_file():
        return path / run_files.MODEL_DIR
    if (path / PIPELINE_INDEX).is_file() and (path / "vae").is_dir():
        return path / "vae"
    return path


def load_vae(
    vae: CustomAutoencoderKL | str | os.PathLike,
    dtype: torch.dtype | None = None,
    subfolder: str | None = None,
    **hub_options,
) -> CustomAutoencoderKL:
    """A ``CustomAutoencoderKL`` as is (cast in place if `dtype` is given); anything else a user may name
    (a model folder of ours or a stock ``AutoencoderKL``, a run or pipeline folder, a checkpoint file, a Hub
    repo or file: see ``model_sources``) is loaded, in `dtype` if given, else in the dtype of its weights."""
    if isinstance(vae, CustomAutoencoderKL):
        return vae if dtype is None or vae.dtype == dtype else vae.to(dtype)
    if not isinstance(vae, (str, os.PathLike)):
        raise TypeError(f"vae must be a CustomAutoencoderKL, a path or a Hub name, not {type(vae).__name__}")
    path = model_path(locate(vae, subfolder, **hub_options))
    if path.is_dir():
        if not (path / conversion.CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path}: a folder with no {conversion.CONFIG_NAME}: not a VAE model folder")
        model = CustomAutoencoderKL.from_pretrained(path, torch_dtype=dtype)
    else:
        model = CustomAutoencoderKL.from_single_file(path, torch_dtype=dtype)
    return model.eval()  # converted checkpoints come back in training mode
