"""A Stable Diffusion VAE written from scratch, at home in the diffusers ecosystem.

The names below load on first use: ``import sd_custom_vae.network`` (which ``conversion`` does) pulls in
the network alone, not the diffusers face, the training loop or the command line.
"""

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "CustomAutoencoderKL": "autoencoder_kl",
    "ScratchVAE": "scratch_vae",
    "AttentionBlock": "network",
    "Decoder": "network",
    "Encoder": "network",
    "ResidualBlock": "network",
    "reparameterize": "network",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
