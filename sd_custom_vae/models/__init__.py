"""Layer 4, the models: the network as ``CustomAutoencoderKL`` (diffusers' face) and ``ScratchVAE`` (the plain
module training trains), with what is done to a whole model: exact tiling, the float16 rescale, loading from
anything a user names, pipelines, Hub repositories.

The names below load on first use, so that a module of this layer (the run layout, the model resolver) can be
imported without diffusers.
"""

import importlib

_EXPORTS = {"CustomAutoencoderKL": "autoencoder_kl", "ScratchVAE": "scratch_vae", "load_vae": "loading"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
