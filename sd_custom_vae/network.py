"""The Stable Diffusion VAE network, written from scratch.

The encoder turns an image into the mean and log-variance of a diagonal Gaussian over latents;
the decoder turns latents back into an image. Layer order, padding and GroupNorm epsilon follow
the original LDM autoencoder, so that with the same weights this network computes the same
function as diffusers' ``AutoencoderKL``.

Each of Encoder and Decoder is a flat sequence of *stages* (``stages()``): ``forward`` runs them in
order, and exact tiling (``tiling.py``) walks the same list. Every parameter is used by calling the
module that owns it, so hooks that move, cast or trace weights around a module's forward (CPU and
group offload, layerwise casting, PEFT, ONNX export) see all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBlock
from .norms import group_norm

# diffusers clamps the log-variance to this range before exponentiating; so do we.
LOGVAR_RANGE = (-30.0, 20.0)


def downsampling_factor(block_out_channels) -> int:
    """Image side / latent side: every level but the last halves the resolution."""
    return 2 ** (len(block_out_channels) - 1)


class ResidualBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, added to the input (through a 1×1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # like diffusers' conv_shortcut: no module at all when the channels stay (nothing for PEFT to match)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first half's output is handed over in a list that finish() empties: as an argument, the caller
        # would hold it for the whole call, one activation more at the peak than diffusers' block.
        return self.finish(x, [self.start(x)])

    # Two halves, each opening with its GroupNorm: exact tiling runs them one at a time (see tiling.py).
    # Without autograd nothing needs the intermediates: SiLU and the residual sum can overwrite fresh
    # tensors in place. One statement per step, so each intermediate is freed as soon as the next
    # exists: at most the input and two activations are alive at once.

    def start(self, x: torch.Tensor) -> torch.Tensor:
        """GroupNorm → SiLU → conv1."""
        return self.conv1(F.silu(self.norm1(x), inplace=not torch.is_grad_enabled()))

    def finish(self, x: torch.Tensor, h: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """GroupNorm → SiLU → conv2 of the first half's output `h` (or a list holding only it, which is emptied
        so that `h` is freed once normalised), plus the shortcut of the block's input `x`."""
        if isinstance(h, list):
            h = h.pop()
        inplace = not torch.is_grad_enabled()
        h = self.norm2(h)  # its own statement: the first half's output is freed here, before conv2 runs
        h = self.conv2(F.silu(h, inplace=inplace))
        skip = x if self.shortcut is None else self.shortcut(x)
        return h.add_(skip) if inplace else skip + h


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding only right and bottom, as the original SD encoder does."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class NearestUpsampleConv2d(nn.Conv2d):
    """A conv of the nearest-neighbour ×2 enlargement of its input, computed without building it.

    Its weight and bias mean what they mean in ``conv(interpolate(x, scale_factor=2))``, so state dicts,
    LoRA deltas and merges are those of that conv. For the 3×3 conv the decoder uses (padding 1),
    each output pixel sees only two distinct rows and two distinct columns of x, so each of the four
    output phases (even/odd row × even/odd column) is a 2×2 conv of x whose taps are sums of the 3×3
    kernel's: the same function with 4/9 of the multiply-adds and no intermediate four times the
    input's size. It differs from the literal form by float rounding only (~1e-7 relative). Other
    shapes (PEFT builds LoRA convs with the base conv's class and arguments) run the literal form.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size=3, stride=1, padding=1, **kwargs):
        super().__init__(in_channels, in_channels if out_channels is None else out_channels, kernel_size, stride, padding, **kwargs)

    def phase_kernels(self) -> list[list[torch.Tensor]]:
        """kernels[a][b]: the 2×2 kernel producing output rows 2i+a, columns 2j+b from x[i-1+a : i+1+a, j-1+b : j+1+b]."""

        def merge(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
            first, middle, last = w.unbind(dim)
            return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)

        return [list(merge(rows, 3)) for rows in merge(self.weight, 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.kernel_size, self.stride, self.padding, self.groups, self.padding_mode) != ((3, 3), (1, 1), (1, 1), 1, "zeros"):
            return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1))
        phases = [
            [F.conv2d(padded[:, :, a : a + height + 1, b : b + width + 1], kernel, self.bias) for b, kernel in enumerate(row)]
            for a, row in enumerate(self.phase_kernels())
        ]
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            # Exporters and compilers want pure ops: interleave the phases with pixel_shuffle (ONNX DepthToSpace).
            stacked = torch.stack([phase for row in phases for phase in row], dim=2)  # channel-major (c, a, b)
            return F.pixel_shuffle(stacked.flatten(1, 2), 2)
        return self._interleave_in_place(phases, x)

    def _interleave_in_place(self, phases: list[list[torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
        # Eagerly, writing each phase into its strided view of the output keeps the peak at the
        # output plus one phase (pixel_shuffle would hold a second copy of the output), in either layout.
        batch, _, height, width = x.shape
        channels = self.out_channels
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        dtype = phases[0][0].dtype
        out = torch.empty(batch, channels, 2 * height, 2 * width, dtype=dtype, device=x.device, memory_format=memory_format)
        # (batch, channels, row, row phase, column, column phase) views of `out`
        if channels_last:
            view = out.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, channels).permute(0, 5, 1, 2, 3, 4)
        else:
            view = out.view(batch, channels, height, 2, width, 2)
        for a, row in enumerate(phases):
            for b, phase in enumerate(row):
                view[:, :, :, a, :, b] = phase
        return out


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3×3 conv (no transposed conv, so no checkerboard)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = NearestUpsampleConv2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _checkpointed(owner: nn.Module, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `stage`, through gradient checkpointing when `owner` has it on and autograd is recording."""
    if owner.gradient_checkpointing and torch.is_grad_enabled():
        return owner._gradient_checkpointing_func(stage, x)
    return stage(x)


def _run_stages(owner: nn.Module, stages: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Encoder/Decoder forward: the levels checkpointed (as diffusers does), the mid block checkpointing
    its own parts, the first and last conv not at all (their inputs are kept anyway)."""
    for stage in stages:
        x = _checkpointed(owner, stage, x) if isinstance(stage, Level) else stage(x)
    return x


# Named as diffusers names the VAE's mid block, so tools that select modules by class name (gradient
# checkpointing checks, device maps) treat ours alike.
class UNetMidBlock2D(nn.Module):
    """Residual → attention → residual at the lowest resolution, where attention is affordable."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.res1 = ResidualBlock(channels, channels, groups)
        self.attn = AttentionBlock(channels, groups) if add_attention else None
        self.res2 = ResidualBlock(channels, channels, groups)
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (self.res1, self.attn, self.res2):
            if stage is not None:
                x = _checkpointed(self, stage, x)
        return x


class Level(nn.Module):
    """One resolution level: residual blocks, then the resampler to the next level (none after the last).

    The resampler is registered as ``downsample`` (encoder) or ``upsample`` (decoder): those names are
    part of the state dict.
    """

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, resampler: str | None):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.res_blocks = nn.ModuleList(ResidualBlock(a, b, groups) for a, b in zip(channels, channels[1:]))
        self.resampler = resampler
        if resampler == "downsample":
            self.downsample = Downsample(out_channels)
        elif resampler == "upsample":
            self.upsample = Upsample(out_channels)
        elif resampler is not None:
            raise ValueError(f"unknown resampler {resampler!r}")

    def stages(self) -> list[nn.Module]:
        return [*self.res_blocks, *([getattr(self, self.resampler)] if self.resampler else [])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


class Head(nn.Module):
    """norm_out → SiLU → conv_out as one stage. The modules stay where the network registered them:
    this wrapper holds them in a tuple, so it owns no parameters and adds no state-dict entries."""

    def __init__(self, norm: nn.GroupNorm, conv: nn.Conv2d):
        super().__init__()
        self.parts = (norm, conv)

    @property
    def out_channels(self) -> int:
        return self.parts[1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm, conv = self.parts
        return conv(F.silu(norm(x), inplace=not torch.is_grad_enabled()))


def check_input(x, channels: int, multiple: int, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__} (convert with torch.from_numpy)")
    if not x.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype} (convert with .float())")
    if x.ndim != 4:
        raise ValueError(f"{what} must be a 4-D tensor (batch, channels, height, width), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch (shape {tuple(x.shape)})")
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
        self.downsampling_factor = downsampling_factor(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        last = len(block_out_channels) - 1
        channels = [block_out_channels[0], *block_out_channels]
        self.down = nn.ModuleList(
            Level(channels[i], channels[i + 1], layers_per_block, groups, "downsample" if i < last else None)
            for i in range(len(block_out_channels))
        )
        self.mid = UNetMidBlock2D(block_out_channels[-1], groups, mid_block_add_attention)
        self.norm_out = group_norm(block_out_channels[-1], groups)
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * latent_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def stages(self) -> list[nn.Module]:
        """The network as the sequence of modules ``forward`` calls (tiling walks it, levels opened up)."""
        return [self.conv_in, *self.down, self.mid, Head(self.norm_out, self.conv_out)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.downsampling_factor, "image")
        return _run_stages(self, self.stages(), x)


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
        self.mid = UNetMidBlock2D(reversed_channels[0], groups, mid_block_add_attention)
        last = len(block_out_channels) - 1
        channels = [reversed_channels[0], *reversed_channels]
        self.up = nn.ModuleList(
            Level(channels[i], channels[i + 1], layers_per_block + 1, groups, "upsample" if i < last else None)
            for i in range(len(block_out_channels))
        )
        self.norm_out = group_norm(block_out_channels[0], groups)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def stages(self) -> list[nn.Module]:
        """The network as the sequence of modules ``forward`` calls (tiling walks it, levels opened up)."""
        return [self.conv_in, self.mid, *self.up, Head(self.norm_out, self.conv_out)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.latent_channels, 1, "latents")
        return _run_stages(self, self.stages(), z)


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
            latent_channels, block_out_channels, layers_per_block, out_channels, norm_num_groups, mid_block_add_attention
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
