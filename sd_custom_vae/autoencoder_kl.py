"""The public module of ``CustomAutoencoderKL``: the path pipelines record in ``model_index.json`` (since 0.1), kept
whatever the package's layout. The class itself is ``models/autoencoder_kl.py``'s."""

# diffusers' pipeline loader looks ModelMixin up in the module a component's class is recorded under
from diffusers import ModelMixin  # noqa: F401

from .models.autoencoder_kl import CustomAutoencoderKL

__all__ = ["CustomAutoencoderKL"]
