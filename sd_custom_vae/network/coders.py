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
from .architecture import downsampling_factor
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
    """Image → moments: ``2 * latent_channels`` channels, the mean and then the log-variance."""

    def __init__(
        self,
        in_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        latent_channels: int,
        groups: int,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.downsampling_factor = downsampling_factor(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        last = len(block_out_channels) - 1
        channels = [block_out_channels[0], *block_out_channels]
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(channels[i], channels[i + 1], layers_per_block, groups, downsample=i < last)
            for i in range(len(block_out_channels))
        )
        self.mid_block = UNetMidBlock2D(block_out_channels[-1], groups, mid_block_add_attention)
        self.conv_norm_out = group_norm(block_out_channels[-1], groups)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)
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
    """Latents → image. Mirrors the encoder, with one extra residual block per level."""

    def __init__(
        self,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        out_channels: int,
        groups: int,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        self.latent_channels = latent_channels
        self.upsampling_factor = downsampling_factor(block_out_channels)
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, reversed_channels[0], 3, padding=1)
        self.mid_block = UNetMidBlock2D(reversed_channels[0], groups, mid_block_add_attention)
        last = len(block_out_channels) - 1
        channels = [reversed_channels[0], *reversed_channels]
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(channels[i], channels[i + 1], layers_per_block + 1, groups, upsample=i < last)
            for i in range(len(block_out_channels))
        )
        self.conv_norm_out = group_norm(block_out_channels[0], groups)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
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

    def build_network(
        self,
        in_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        latent_channels: int,
        norm_num_groups: int,
        mid_block_add_attention: bool,
        use_quant_conv: bool,
        use_post_quant_conv: bool,
    ) -> None:
        self.encoder = Encoder(
            in_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, mid_block_add_attention
        )
        self.decoder = Decoder(
            latent_channels, block_out_channels, layers_per_block, out_channels, norm_num_groups,
            mid_block_add_attention
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

    @property
    def downsampling_factor(self) -> int:
        return self.encoder.downsampling_factor


def reparameterize(
    mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample ``mean + std * eps`` with ``eps ~ N(0, I)``: the sample stays differentiable in mean and logvar."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output → (mean, log-variance), the log-variance clamped as diffusers does."""
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(*LOGVAR_RANGE)
