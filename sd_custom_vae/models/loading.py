"""Any VAE a user names (a model, a folder, a run, a pipeline, a checkpoint file, a Hub name) as a
``CustomAutoencoderKL``."""

from __future__ import annotations

import os

import torch

from .autoencoder_kl import CustomAutoencoderKL
from .resolver import resolve


def load_vae(
    vae: CustomAutoencoderKL | str | os.PathLike,
    dtype: torch.dtype | None = None,
    subfolder: str | None = None,
    **hub_options,
) -> CustomAutoencoderKL:
    """A ``CustomAutoencoderKL`` as is (cast in place if `dtype` is given); anything else a user may name
    (a model folder of ours or a stock ``AutoencoderKL``, a run or pipeline folder, a checkpoint file, a Hub
    repo or file: see ``sources``) is loaded, in `dtype` if given, else in the dtype of its weights."""
    if isinstance(vae, CustomAutoencoderKL):
        return vae if dtype is None or vae.dtype == dtype else vae.to(dtype)
    if not isinstance(vae, (str, os.PathLike)):
        raise TypeError(f"vae must be a CustomAutoencoderKL, a path or a Hub name, not {type(vae).__name__}")
    path = resolve(vae, subfolder, **hub_options).path
    if path.is_dir():
        model = CustomAutoencoderKL.from_pretrained(path, torch_dtype=dtype)
    else:
        model = CustomAutoencoderKL.from_single_file(path, torch_dtype=dtype)
    return model.eval()  # converted checkpoints come back in training mode
