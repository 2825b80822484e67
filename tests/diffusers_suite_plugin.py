"""A pytest plugin that runs diffusers' own tests with our VAE inside: every ``AutoencoderKL`` a test builds becomes a
``CustomAutoencoderKL`` holding the same weights.

diffusers' tests are not in its installed package: run them in a checkout of the installed version, from its root,
with this folder on the path (docs/drop-in.md):

    PYTHONPATH=/path/to/sd-custom-vae/tests python -m pytest -p diffusers_suite_plugin -m "not slow" ...

Test modules build their tiny components as ``torch.manual_seed(0); vae = AutoencoderKL(...)``. After collection
the plugin replaces the name ``AutoencoderKL`` in every module imported from the checkout's ``tests`` folder with
``AutoencoderKLWithOurNetwork``, which builds the stock model first, so that the random numbers drawn (and so the
weights of the components built after it) stay what diffusers' expected values assume, and returns ours with its
config and weights.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import torch
from diffusers import AutoencoderKL

from sd_custom_vae import CustomAutoencoderKL


class AutoencoderKLWithOurNetwork(AutoencoderKL):
    """Calling it gives a ``CustomAutoencoderKL`` with the weights the same call gives ``AutoencoderKL``."""

    def __new__(cls, *args, **kwargs):
        stock = AutoencoderKL(*args, **kwargs)
        # Building ours draws random initial weights: it must not move the generator the next component draws from.
        with torch.random.fork_rng(devices=[]):
            ours = CustomAutoencoderKL(**stock.config)
        ours.load_state_dict(stock.state_dict(), strict=True)
        return ours.train(stock.training)  # not an instance of cls: Python does not call __init__ on it


def swap_in(module: ModuleType) -> bool:
    """Replace ``module.AutoencoderKL`` (diffusers' class) with ``AutoencoderKLWithOurNetwork``; True if it did."""
    if getattr(module, "AutoencoderKL", None) is not AutoencoderKL:
        return False
    module.AutoencoderKL = AutoencoderKLWithOurNetwork
    return True


def pytest_collection_finish(session) -> None:
    tests = Path(session.config.rootpath, "tests").resolve()
    swapped = [name for name, module in list(sys.modules.items())
               if tests in Path(getattr(module, "__file__", None) or "/").resolve().parents and swap_in(module)]
    print(f"\ndiffusers_suite_plugin: CustomAutoencoderKL swapped in for AutoencoderKL in {len(swapped)} module(s)")
