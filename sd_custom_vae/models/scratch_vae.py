"""ScratchVAE: the plain ``nn.Module`` a tutorial writes, and the model training trains.

``forward(x)`` returns ``(reconstruction, mean, logvar)``; the latent fed to the decoder is drawn
with the reparameterisation trick. It builds the same modules under the same names as
``CustomAutoencoderKL`` (``VAEModules``: diffusers' names), so their state dicts, and ``AutoencoderKL``'s,
are interchangeable; ``conversion`` maps them to every other layout (docs/architecture.md says why).
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from ..network import DEFAULT, Architecture, VAEModules, check_input, reparameterize, split_moments


class ScratchVAE(nn.Module, VAEModules):
    """The SD VAE as a plain ``nn.Module``, with ``AutoencoderKL``'s module names.

    ``ScratchVAE(block_out_channels=(128, 256, 512, 512), layers_per_block=2)`` and
    ``ScratchVAE(Architecture(...))`` build the same network; keywords given with an architecture replace its
    fields. ``config`` holds the architecture as a dict of these keywords.

    Args:
        architecture: The shape of the network (default: ``Architecture()``, diffusers' ``AutoencoderKL`` defaults).
        **keywords: Fields of ``Architecture`` (``in_channels``, ``out_channels``, ``block_out_channels``,
            ``layers_per_block``, ``latent_channels``, ``norm_num_groups``, ``mid_block_add_attention``,
            ``use_quant_conv``, ``use_post_quant_conv``), each replacing the architecture's.

    Raises:
        UserError: A value the architecture does not allow (the message names the key).
        TypeError: A keyword that is not a field of ``Architecture``.
    """

    def __init__(self, architecture: Architecture | None = None, **keywords):
        super().__init__()
        self.architecture = dataclasses.replace(DEFAULT if architecture is None else architecture, **keywords)
        self.config = self.architecture.as_dict()
        self.build_network(self.architecture)

    def enable_gradient_checkpointing(self) -> None:
        """Keep only the inputs of each level and mid-block part in the forward pass and recompute the rest
        in the backward pass: less memory for more time, the same gradients (as ``ModelMixin``'s)."""
        checkpoint = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=False)
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = checkpoint

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [-1, 1] → (mean, logvar) of the latent distribution.

        Args:
            x: Images in [-1, 1], shape (batch, in_channels, height, width), height and width multiples of the
                downsampling factor.

        Returns:
            The mean and the log-variance (clamped as diffusers does), each of ``latent_channels`` channels.
        """
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return split_moments(moments)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents → images in [-1, 1].

        Args:
            z: Latents, shape (batch, latent_channels, height, width), unscaled (not multiplied by a
                pipeline's ``scaling_factor``).
        """
        check_input(z, self.decoder.latent_channels, 1, "latents")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, latents: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample, decode: what training runs.

        Args:
            x: Images in [-1, 1], as ``encode`` takes them.
            generator: The random generator the latent sample is drawn from (default: torch's global one).
            latents: Latents to decode instead of a sample of the encoding (distillation decodes a teacher's).

        Returns:
            ``(reconstruction, mean, logvar)``: the reconstruction decodes a reparameterised sample of the encoding,
            or ``latents`` when given.
        """
        mean, logvar = self.encode(x)
        z = reparameterize(mean, logvar, generator) if latents is None else latents
        return self.decode(z), mean, logvar
