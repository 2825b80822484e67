"""The Stable Diffusion VAE network, written from scratch.

The encoder turns an image into the mean and log-variance of a diagonal Gaussian over latents;
the decoder turns latents back into an image. Layer order, padding and GroupNorm epsilon follow
the original LDM autoencoder, so that with the same weights this network computes the same
function as diffusers' ``AutoencoderKL``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# LDM's GroupNorm epsilon. torch's default (1e-5) gives visibly different numbers on the same weights.
GROUP_NORM_EPS = 1e-6
# diffusers clamps the log-variance to this range before exponentiating; so do we.
LOGVAR_RANGE = (-30.0, 20.0)


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUP_NORM_EPS)


class ResidualBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, added to the input (through a 1×1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without autograd nothing needs the intermediates: SiLU and the residual sum can overwrite
        # fresh tensors in place. One statement per step, so each intermediate is freed as soon as
        # the next exists: at most the input and two activations are alive at once.
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.norm1(x), inplace=inplace)
        h = self.conv1(h)
        h = F.silu(self.norm2(h), inplace=inplace)
        h = self.conv2(h)
        return h.add_(self.shortcut(x)) if inplace else self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H·W positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (batch, H·W, channels)
        # A head axis of size one: SDPA's fused kernels want (batch, heads, tokens, dim).
        q, k, v = (proj(tokens).unsqueeze(1) for proj in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = self.out(attended).transpose(1, 2).reshape(batch, channels, height, width)
        # `out` is a channels-last view; with it first, the sum (and the convs after it) stay channels-last,
        # which is both faster on CPU and the exact arithmetic diffusers does.
        return out.add_(x) if not torch.is_grad_enabled() else out + x


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding only right and bottom, as the original SD encoder does."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3×3 conv (no transposed conv, so no checkerboard).

    Computed without building the ×2 image. In conv(upsample(x)) each output pixel sees only two
    distinct rows and two distinct columns of x, so each of the four output phases (even/odd row ×
    even/odd column) is a 2×2 conv of x whose taps are sums of the 3×3 kernel's. The same function
    with 4/9 of the multiply-adds and no intermediate four times the input's size; it differs from
    the literal form by float rounding only (~1e-7 relative).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def phase_kernels(self) -> list[list[torch.Tensor]]:
        """kernels[a][b]: the 2×2 kernel producing output rows 2i+a, columns 2j+b from x[i-1+a : i+1+a, j-1+b : j+1+b]."""
        w = self.conv.weight

        def merge(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
            first, middle, last = w.unbind(dim)
            return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)

        return [list(merge(rows, 3)) for rows in merge(w, 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        channels = self.conv.out_channels
        padded = F.pad(x, (1, 1, 1, 1))
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(
            batch, channels, 2 * height, 2 * width, dtype=x.dtype, device=x.device, memory_format=memory_format
        )
        # (batch, channels, row, row phase, column, column phase) views of `out`, in either memory layout
        if channels_last:
            phases = out.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, channels).permute(0, 5, 1, 2, 3, 4)
        else:
            phases = out.view(batch, channels, height, 2, width, 2)
        for a, row in enumerate(self.phase_kernels()):
            for b, kernel in enumerate(row):
                window = padded[:, :, a : a + height + 1, b : b + width + 1]
                phases[:, :, :, a, :, b] = F.conv2d(window, kernel, self.conv.bias)
        return out


class MidBlock(nn.Module):
    """Residual → attention → residual at the lowest resolution, where attention is affordable."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, groups)
        self.attn = AttentionBlock(channels, groups) if add_attention else None
        self.res2 = ResidualBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.res_blocks = nn.ModuleList(ResidualBlock(a, b, groups) for a, b in zip(channels, channels[1:]))
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.res_blocks = nn.ModuleList(ResidualBlock(a, b, groups) for a, b in zip(channels, channels[1:]))
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x if self.upsample is None else self.upsample(x)


def check_input(x: torch.Tensor, channels: int, multiple: int, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} must be a 4-D tensor (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{what} has {x.shape[1]} channels, expected {channels} (shape {tuple(x.shape)})")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
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
        self.downsampling_factor = 2 ** (len(block_out_channels) - 1)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        last = len(block_out_channels) - 1
        channels = [block_out_channels[0], *block_out_channels]
        self.down = nn.ModuleList(
            DownBlock(channels[i], channels[i + 1], layers_per_block, groups, downsample=i < last)
            for i in range(len(block_out_channels))
        )
        self.mid = MidBlock(block_out_channels[-1], groups, mid_block_add_attention)
        self.norm_out = group_norm(block_out_channels[-1], groups)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.downsampling_factor, "image")
        x = self.conv_in(x)
        for block in self.down:
            x = block(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=not torch.is_grad_enabled()))


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
        reversed_channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, reversed_channels[0], 3, padding=1)
        self.mid = MidBlock(reversed_channels[0], groups, mid_block_add_attention)
        last = len(block_out_channels) - 1
        channels = [reversed_channels[0], *reversed_channels]
        self.up = nn.ModuleList(
            UpBlock(channels[i], channels[i + 1], layers_per_block + 1, groups, upsample=i < last)
            for i in range(len(block_out_channels))
        )
        self.norm_out = group_norm(block_out_channels[0], groups)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.latent_channels, 1, "latents")
        x = self.mid(self.conv_in(z))
        for block in self.up:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x), inplace=not torch.is_grad_enabled()))


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


def validate_config(
    in_channels: int,
    out_channels: int,
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    latent_channels: int,
    norm_num_groups: int,
) -> None:
    """Raise ``ValueError`` naming the offending value before any layer is built."""
    positive = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "layers_per_block": layers_per_block,
        "latent_channels": latent_channels,
        "norm_num_groups": norm_num_groups,
    }
    for name, value in positive.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if len(block_out_channels) == 0:
        raise ValueError("block_out_channels must list at least one level, got an empty sequence")
    for channels in block_out_channels:
        if not isinstance(channels, int) or channels < 1 or channels % norm_num_groups:
            raise ValueError(
                f"block_out_channels entry {channels!r} (in {tuple(block_out_channels)}) is not a positive "
                f"multiple of norm_num_groups={norm_num_groups}: GroupNorm splits channels into that many groups"
            )
