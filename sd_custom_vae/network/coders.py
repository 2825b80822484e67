"""The encoder and the decoder, and the modules of one whole VAE.

The encoder turns an image into the mean and log-variance of a diagonal Gaussian over latents; the decoder
turns latents back into an image. Their module names are diffusers' (``conv_in``, ``down_blocks``,
``mid_block``, ``up_blocks``, ``conv_norm_out``, ``conv_out``). ``blocks()`` lists each as the sequence of
blocks ``forward`` runs, for the algorithms that walk the network (exact tiling, the float16 rescale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import UserError
from .architecture import Architecture, downsampling_factor
from .blocks import DownEncoderBlock2D, UNetMidBlock2D, UpDecoderBlock2D, checkpointed
from .norms import group_norm
from .roles import StreamRole, TileStep

# diffusers clamps the log-variance to this range before exponentiating; so do we.
LOGVAR_RANGE = (-30.0, 20.0)


class Stem(nn.Module):
    """conv_in as a block. It holds the conv in a tuple, so it owns no parameters and adds no state-dict
    entries: the conv stays where the encoder or decoder registered it."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.parts = (conv,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts[0](x)

    def tile_steps(self) -> list[TileStep]:
        conv = self.parts[0]
        reach = conv.kernel_size[0] // 2
        return [TileStep(conv, conv.out_channels, halo=(reach, reach))]

    def stream_roles(self) -> list[StreamRole]:
        conv = self.parts[0]
        return [StreamRole(writes=(conv,), measured=(conv,))]  # it writes the stream's first values


class Head(nn.Module):
    """conv_norm_out → SiLU → conv_out as one block, held as ``Stem`` holds conv_in."""

    def __init__(self, norm: nn.GroupNorm, conv: nn.Conv2d):
        super().__init__()
        self.parts = (norm, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, conv = self.parts
        return conv(F.silu(norm(x), inplace=not torch.is_grad_enabled()))

    def tile_steps(self) -> list[TileStep]:
        norm, conv = self.parts
        return [TileStep(self, conv.out_channels, norm, halo=(1, 1))]

    def stream_roles(self) -> list[StreamRole]:
        return [StreamRole(reads=(self.parts[0],))]  # the stream ends here


def check_input(x, channels: int, multiple: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__} (convert with torch.from_numpy)")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype} (convert with .float())")
    if x.ndim != 4:
        raise UserError(f"{what} must be a 4-D tensor (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise UserError(f"{what} is an empty batch (shape {tuple(x.shape)})")
    if x.shape[1] != channels:
        raise UserError(f"{what} has {x.shape[1]} channels, expected {channels} (shape {tuple(x.shape)})")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise UserError(
            f"{what} height and width must be multiples of {multiple} (the downsampling factor), "
            f"got {height}×{width}"
        )


class Encoder(nn.Module):
    """Image → moments: ``2 * latent_channels`` channels, the mean and then the log-variance.

    Args:
        architecture: The shape of the network (its ``in_channels``, levels, ``latent_channels`` ...).
    """

    def __init__(self, architecture: Architecture):
        super().__init__()
        channels, groups = architecture.block_out_channels, architecture.norm_num_groups
        self.in_channels = architecture.in_channels
        self.downsampling_factor = downsampling_factor(channels)
        self.conv_in = nn.Conv2d(architecture.in_channels, channels[0], 3, padding=1)
        last = len(channels) - 1
        inputs = [channels[0], *channels]
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(inputs[i], inputs[i + 1], architecture.layers_per_block, groups, downsample=i < last)
            for i in range(len(channels))
        )
        self.mid_block = UNetMidBlock2D(channels[-1], groups, architecture.mid_block_add_attention)
        self.conv_norm_out = group_norm(channels[-1], groups)
        self.conv_out = nn.Conv2d(channels[-1], 2 * architecture.latent_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def blocks(self) -> list[nn.Module]:
        """The blocks ``forward`` runs, in order."""
        return [Stem(self.conv_in), *self.down_blocks, self.mid_block, Head(self.conv_norm_out, self.conv_out)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.downsampling_factor, "image")
        x = self.conv_in(x)
        # the levels checkpointed as diffusers does; the mid block checkpoints its own parts
        for level in self.down_blocks:
            x = checkpointed(self, level, x)
        x = self.mid_block(x)
        return Head(self.conv_norm_out, self.conv_out)(x)


class Decoder(nn.Module):
    """Latents → image. Mirrors the encoder, with one extra residual block per level.

    Args:
        architecture: The shape of the network (its ``latent_channels``, levels, ``out_channels`` ...).
    """

    def __init__(self, architecture: Architecture):
        super().__init__()
        channels, groups = architecture.block_out_channels, architecture.norm_num_groups
        self.latent_channels = architecture.latent_channels
        self.upsampling_factor = downsampling_factor(channels)
        reversed_channels = list(reversed(channels))
        self.conv_in = nn.Conv2d(architecture.latent_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(reversed_channels[0], groups, architecture.mid_block_add_attention)
        last = len(channels) - 1
        inputs = [reversed_channels[0], *reversed_channels]
        blocks_per_level = architecture.layers_per_block + 1
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(inputs[i], inputs[i + 1], blocks_per_level, groups, upsample=i < last)
            for i in range(len(channels))
        )
        self.conv_norm_out = group_norm(channels[0], groups)
        self.conv_out = nn.Conv2d(channels[0], architecture.out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def blocks(self) -> list[nn.Module]:
        """The blocks ``forward`` runs, in order."""
        return [Stem(self.conv_in), self.mid_block, *self.up_blocks, Head(self.conv_norm_out, self.conv_out)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.latent_channels, 1, "latents")
        x = self.mid_block(self.conv_in(z))
        for level in self.up_blocks:
            x = checkpointed(self, level, x)
        return Head(self.conv_norm_out, self.conv_out)(x)


class VAEModules:
    """What ``ScratchVAE`` and ``CustomAutoencoderKL`` share: the modules of one VAE, built once here."""

    def build_network(self, architecture: Architecture) -> None:
        """Build ``encoder``, ``decoder``, ``quant_conv`` and ``post_quant_conv`` (the latter two ``None`` when the
        architecture leaves them out), in this order: the state dict's order.

        Args:
            architecture: The shape of the network.
        """
        self.encoder = Encoder(architecture)
        self.decoder = Decoder(architecture)
        latent = architecture.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if architecture.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if architecture.use_post_quant_conv else None

    @property
    def downsampling_factor(self) -> int:
        return self.encoder.downsampling_factor


def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample ``mean + std * eps`` with ``eps ~ N(0, I)``: the sample stays differentiable in mean and logvar.

    Args:
        mean: The mean of the latent distribution.
        logvar: Its log-variance, of the same shape.
        generator: The random generator ``eps`` is drawn from (default: torch's global one).

    Returns:
        A sample of the shape of ``mean``.
    """
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output → (mean, log-variance), the log-variance clamped as diffusers does."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(*LOGVAR_RANGE)
