"""A Stable Diffusion VAE written from scratch, at home in the diffusers ecosystem.

The package is laid out by layer, each importing only from those below it (docs/architecture.md):
``base`` → ``network`` → ``conversion`` → ``data`` → ``models`` → ``evaluation`` → ``training`` → ``cli``; the
top-level ``conversion`` package re-exports ``sd_custom_vae.conversion``. Importing the package imports torch and
diffusers: the network's attention block is built on diffusers' attention mixin and runs its processors.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# the class through the module that pipelines saved by 0.2 name, so that it is imported along with it
from .autoencoder_kl import CustomAutoencoderKL
from .base.deprecation import deprecated
from .models import ScratchVAE, load_vae
from .network import AttentionBlock, Decoder, Encoder, ResidualBlock, reparameterize

__version__ = "0.3.0"

__all__ = [
    "AttentionBlock", "CustomAutoencoderKL", "Decoder", "Encoder", "ResidualBlock", "ScratchVAE", "__version__",
    "load_vae", "reparameterize",
]


# Module paths that 0.2's README and examples imported from, before the package was laid out by layer
MOVED_MODULES = {"pipeline": "models.pipeline", "loading": "models.loading", "train_config": "training"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import sd_custom_vae.pipeline`` gives the module that holds its names now, with a warning."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.rpartition(".")
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and old in MOVED_MODULES else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        new = f"{__name__}.{MOVED_MODULES[module.__name__.rpartition('.')[2]]}"
        deprecated(module.__name__, new, stacklevel=4)  # moved in 0.3
        # a module that puts another in its place in sys.modules is what its importer receives
        sys.modules[module.__name__] = importlib.import_module(new)


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
