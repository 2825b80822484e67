"""ScratchVAE: the plain ``nn.Module`` the course trains.

``forward(x)`` returns ``(reconstruction, mean, logvar)``; the latent fed to the decoder is drawn
with the reparameterisation trick. Its parameter names are the ones every other format in this
project is converted to and from (see ``conversion``), and ``CustomAutoencoderKL`` uses the same
modules under the same names, so their state dicts are interchangeable.
"""

from __future__ import annotations

import torch
from torch import nn

from .network import Decoder, Encoder, check_input, reparameterize, split_moments, validate_config


class ScratchVAE(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        validate_config(
            in_channels, out_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups
        )
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
        )
        self.encoder = Encoder(
            in_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, mid_block_add_attention
        )
        self.decoder = Decoder(
            latent_channels, block_out_channels, layers_per_block, out_channels, norm_num_groups, mid_block_add_attention
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [-1, 1] → (mean, logvar) of the latent distribution."""
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return split_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.decoder.latent_channels, 1, "latents")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, latents: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, mean, logvar). The reconstruction decodes a reparameterised sample of the
        encoding, or `latents` when given (distillation decodes a teacher's latents)."""
        mean, logvar = self.encode(x)
        z = reparameterize(mean, logvar, generator) if latents is None else latents
        return self.decode(z), mean, logvar
