"""ScratchVAE: the plain ``nn.Module`` a tutorial writes, and the model training trains.

``forward(x)`` returns ``(reconstruction, mean, logvar)``; the latent fed to the decoder is drawn
with the reparameterisation trick. It builds the same modules under the same names as
``CustomAutoencoderKL`` (``VAEModules``: diffusers' names), so their state dicts, and ``AutoencoderKL``'s,
are interchangeable; ``conversion`` maps them to every other layout (docs/architecture.md says why).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ..network import DEFAULT, VAEModules, check_input, reparameterize, split_moments, validate_architecture


class ScratchVAE(nn.Module, VAEModules):
    def __init__(
        self,
        in_channels: int = DEFAULT.in_channels,
        out_channels: int = DEFAULT.out_channels,
        block_out_channels: tuple[int, ...] = DEFAULT.block_out_channels,
        layers_per_block: int = DEFAULT.layers_per_block,
        latent_channels: int = DEFAULT.latent_channels,
        norm_num_groups: int = DEFAULT.norm_num_groups,
        mid_block_add_attention: bool = DEFAULT.mid_block_add_attention,
        use_quant_conv: bool = DEFAULT.use_quant_conv,
        use_post_quant_conv: bool = DEFAULT.use_post_quant_conv,
    ):
        super().__init__()
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
        )
        validate_architecture(self.config)
        self.build_network(**self.config)

    def enable_gradient_checkpointing(self) -> None:
        """Keep only the inputs of each level and mid-block part in the forward pass and recompute the rest
        in the backward pass: less memory for more time, the same gradients (as ``ModelMixin``'s)."""
        checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = checkpoint

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
