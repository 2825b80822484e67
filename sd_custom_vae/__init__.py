"""A Stable Diffusion VAE written from scratch, at home in the diffusers ecosystem.

The package is laid out by layer, each importing only from those below it (docs/architecture.md):
``base`` → ``network`` → ``conversion`` → ``data`` → ``models`` → ``evaluation`` → ``training`` → ``cli``; the
top-level ``conversion`` package re-exports ``sd_custom_vae.conversion``. The names below load on first use, so
that the command line's ``--help`` does not import the training loop; the network itself imports diffusers.
"""

import importlib
import importlib.abc
import importlib.util
import sys

from .base.deprecation import deprecated

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
