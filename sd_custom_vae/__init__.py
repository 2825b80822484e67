"""A Stable Diffusion VAE written from scratch, at home in the diffusers ecosystem."""

__version__ = "0.1.0"

from .autoencoder_kl import CustomAutoencoderKL
from .network import AttentionBlock, Decoder, Encoder, ResidualBlock, reparameterize
from .scratch_vae import ScratchVAE

__all__ = [
    "AttentionBlock",
    "CustomAutoencoderKL",
    "Decoder",
    "Encoder",
    "ResidualBlock",
    "ScratchVAE",
    "__version__",
    "reparameterize",
]
