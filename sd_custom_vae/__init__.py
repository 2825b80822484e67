"""A Stable Diffusion VAE written from scratch, at home in the diffusers ecosystem.

The package is laid out by layer, each importing only from those below it (docs/architecture.md):
``network`` → ``data`` → ``models`` → ``evaluation`` → ``training`` → ``hub`` → ``cli``; ``conversion``, a
package of its own, sits on the network. The names below load on first use: ``import sd_custom_vae.network``
(which ``conversion`` does) pulls in the network alone, not diffusers, the training loop or the command line.
"""

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    # the class through the module that pipelines saved by 0.2 name, so that it is imported along with it
    "CustomAutoencoderKL": "autoencoder_kl",
    "ScratchVAE": "models.scratch_vae",
    "load_vae": "models.loading",
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
