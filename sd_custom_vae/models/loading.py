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
    """Any VAE a user names, as a ``CustomAutoencoderKL`` in evaluation mode.

    Args:
        vae: A ``CustomAutoencoderKL``, returned as is (cast in place if ``dtype`` is given); or what names one: a
            model folder of ours or of a stock ``AutoencoderKL``, a training run or pipeline folder, a checkpoint
            file in any scheme and format, a Hub repository or file (``ORG/NAME[@REVISION]``).
        dtype: The dtype to load (or cast) the weights in; default: the dtype they are stored in.
        subfolder: The folder inside a Hub repository or pipeline folder that holds the VAE.
        **hub_options: Keywords of the Hub download (``token``, ``revision``, ``cache_dir``, ``local_files_only``
            ...), as ``from_pretrained`` takes them.

    Returns:
        The model.

    Raises:
        UserError: Nothing there, or nothing a VAE can be read from (the message names the path and what to do).
        TypeError: ``vae`` is neither a model, a path nor a name.
    """
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
