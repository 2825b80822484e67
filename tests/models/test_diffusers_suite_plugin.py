"""The plugin that runs diffusers' own tests with our VAE (tests/diffusers_suite_plugin.py), on a stand-in for one
of diffusers' test modules: what the module builds is ours, with the weights and the random state the stock build
leaves."""

from types import ModuleType

import torch
from diffusers import AutoencoderKL
from diffusers_suite_plugin import swap_in

from sd_custom_vae import CustomAutoencoderKL

TINY = dict(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def dummy_components(module: ModuleType) -> tuple:
    """What a diffusers test's get_dummy_components does: seed, build the VAE by the module's name, build more."""
    torch.manual_seed(0)
    vae = module.AutoencoderKL(**TINY)
    return vae, torch.rand(3)  # the next component's weights come from the same generator


def test_the_module_builds_ours_with_the_stock_weights_and_random_state():
    stand_in = ModuleType("test_pipeline_stand_in")
    stand_in.AutoencoderKL = AutoencoderKL
    stock, stock_next = dummy_components(stand_in)
    assert swap_in(stand_in) and not swap_in(stand_in)
    ours, ours_next = dummy_components(stand_in)
    assert type(ours) is CustomAutoencoderKL and type(stock) is AutoencoderKL
    assert torch.equal(ours_next, stock_next)
    for key, tensor in stock.state_dict().items():
        assert torch.equal(ours.state_dict()[key], tensor), key
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(image).sample, stock(image).sample, atol=1e-5)
