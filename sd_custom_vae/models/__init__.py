"""Layer 4, the models: the network as ``CustomAutoencoderKL`` (diffusers' face) and ``ScratchVAE`` (the plain
module training trains), with what is done to a whole model: exact tiling, the float16 rescale, loading from
anything a user names, pipelines, Hub repositories.
"""

from .autoencoder_kl import CustomAutoencoderKL
from .loading import load_vae
from .scratch_vae import ScratchVAE

__all__ = ["CustomAutoencoderKL", "ScratchVAE", "load_vae"]
