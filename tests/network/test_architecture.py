"""The architecture keywords are declared once, in ``Architecture``; the one signature that must restate them
(diffusers' config is ``CustomAutoencoderKL.__init__``'s signature) is held equal to it here."""

import dataclasses
import inspect

import pytest
import torch
from factories import TINY

from sd_custom_vae import CustomAutoencoderKL, ScratchVAE
from sd_custom_vae.base.errors import UserError
from sd_custom_vae.network import ARCHITECTURE_KEYS, DEFAULT, Architecture


def test_custom_autoencoder_kl_signature_restates_architecture_exactly():
    parameters = inspect.signature(CustomAutoencoderKL.__init__).parameters
    for field in dataclasses.fields(Architecture):
        assert field.name in parameters, f"CustomAutoencoderKL.__init__ lacks the architecture keyword {field.name}"
        parameter = parameters[field.name]
        assert parameter.default == field.default, field.name
        assert parameter.annotation == field.type, field.name  # both strings: `from __future__ import annotations`


def test_every_architecture_keyword_reaches_the_network():
    # each field changed from its default changes the weights' shapes, or (GroupNorm's groups) the norms built
    changed = {"in_channels": 4, "out_channels": 2, "block_out_channels": (32, 64, 64), "layers_per_block": 2,
               "latent_channels": 8, "norm_num_groups": 16, "mid_block_add_attention": False,
               "use_quant_conv": False, "use_post_quant_conv": False}
    assert set(changed) == set(ARCHITECTURE_KEYS)
    for key, value in changed.items():
        default, other = ScratchVAE(**TINY), ScratchVAE(**{**TINY, key: value})
        shapes = {name: tuple(t.shape) for name, t in default.state_dict().items()}
        groups = [m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)]
        assert ({name: tuple(t.shape) for name, t in other.state_dict().items()} != shapes
                or [m.num_groups for m in other.modules() if isinstance(m, torch.nn.GroupNorm)] != groups), key
        model = CustomAutoencoderKL(**{**TINY, key: value})
        assert {name: tuple(t.shape) for name, t in model.state_dict().items()} == {
            name: tuple(t.shape) for name, t in other.state_dict().items()}, key


def test_scratch_vae_takes_an_architecture_or_its_keywords():
    architecture = Architecture(**TINY)
    assert ScratchVAE(architecture).config == ScratchVAE(**TINY).config == architecture.as_dict()
    wider = dataclasses.replace(architecture, latent_channels=8)
    assert ScratchVAE(architecture, latent_channels=8).architecture == wider
    assert ScratchVAE().architecture == DEFAULT
    with pytest.raises(TypeError, match="latent_chanels"):
        ScratchVAE(latent_chanels=8)


def test_an_architecture_is_made_valid_or_not_at_all():
    assert Architecture(block_out_channels=[32, 64]).block_out_channels == (32, 64)  # a JSON list
    with pytest.raises(UserError, match="norm_num_groups=32"):
        Architecture(block_out_channels=(48,))
    with pytest.raises(UserError, match="latent_channels"):
        Architecture(latent_channels="4")
    assert Architecture.from_config({"latent_channels": 8, "scaling_factor": 0.5}) == Architecture(latent_channels=8)
