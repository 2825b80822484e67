"""Small models built in code: nothing in the tests is downloaded."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from sd_custom_vae import CustomAutoencoderKL

SD = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
SDXL = dict(SD, scaling_factor=0.13025, sample_size=1024, force_upcast=True)
FLUX = dict(
    SD, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159
)
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8)
CONFIGS = {"sd": SD, "sdxl": SDXL, "flux": FLUX, "tiny": TINY}


def stock_autoencoder_kl(config: dict, seed: int = 0) -> AutoencoderKL:
    """diffusers' own AutoencoderKL for one of our configs, randomly initialised."""
    levels = len(config["block_out_channels"])
    torch.manual_seed(seed)
    model = AutoencoderKL(
        **config, down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels
    )
    return model.eval()


def randomize_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """GroupNorm weights start at 1 and biases at 0; perturb them so a swapped weight/bias shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.add_(0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def tiny_vae(seed: int = 0, **overrides) -> CustomAutoencoderKL:
    torch.manual_seed(seed)
    return randomize_norms(CustomAutoencoderKL(**{**TINY, **overrides}), seed + 1).eval()


def reconstruct(model, image: torch.Tensor) -> torch.Tensor:
    """The model's reconstruction of `image`, without gradients."""
    with torch.no_grad():
        return model(image).sample
