"""The blocks of the SD VAE, written from scratch: residual block, resamplers, the resolution levels and the
mid block. Their modules carry diffusers' names (``resnets``, ``conv_shortcut``, ``downsamplers.0.conv``, ...),
so a state dict of ours is a state dict of ``AutoencoderKL``.

Layer order, padding and GroupNorm epsilon follow the original LDM autoencoder, so that with the same
weights these blocks compute what diffusers' do. Every parameter is used by calling the module that owns
it, so hooks that move, cast or trace weights around a module's forward (CPU and group offload,
layerwise casting, PEFT, ONNX export) see all of them. Each block also describes itself to exact tiling
and to the float16 rescale (``roles.py``).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionBlock
from .norms import group_norm
from .roles import StreamRole, TileStep


def checkpointed(owner: nn.Module, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run `block`, through gradient checkpointing when `owner` has it on and autograd is recording."""
    if owner.gradient_checkpointing and torch.is_grad_enabled():
        return owner._gradient_checkpointing_func(block, x)
    return block(x)


class ResidualBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, added to the input (through a 1×1 conv when channels change).

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        groups: GroupNorm's groups.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # as diffusers: no module at all when the channels stay (nothing for PEFT to match)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first half's output is handed over in a list that finish() empties: as an argument, the caller
        # would hold it for the whole call, one activation more at the peak than diffusers' block.
        return self.finish(x, [self.start(x)])

    # Two halves, each opening with its GroupNorm: exact tiling runs them one at a time. Without autograd
    # nothing needs the intermediates: SiLU and the residual sum can overwrite fresh tensors in place. One
    # statement per step, so each intermediate is freed as soon as the next exists: at most the input and
    # two activations are alive at once.

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
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return h.add_(skip) if inplace else skip + h

    def tile_steps(self) -> list[TileStep]:
        return [
            TileStep(self.start, self.conv1.out_channels, self.norm1, halo=(1, 1), keeps_input=True),
            # finish(x, h): its GroupNorm normalises h (the first tile given), the shortcut reads the block's input
            TileStep(lambda h, x: self.finish(x, h), self.conv2.out_channels, self.norm2, halo=(1, 1),
                     reads_block_input=True),
        ]

    def stream_roles(self) -> list[StreamRole]:
        shortcut = () if self.conv_shortcut is None else (self.conv_shortcut,)
        return [StreamRole(reads=(self.norm1,), writes=(self.conv2,), carries=shortcut, branch=(self.conv1, self.norm2),
                           measured=(self, self.conv2, *shortcut))]


class Downsample(nn.Module):
    """Stride-2 3×3 conv after padding only right and bottom, as the original SD encoder does."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))

    def tile_steps(self) -> list[TileStep]:
        return [TileStep(self, self.conv.out_channels, halo=(0, 1), scale=0.5)]  # pads right and bottom only

    def stream_roles(self) -> list[StreamRole]:
        return [StreamRole(carries=(self.conv,), measured=(self,))]


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
        super().__init__(in_channels, in_channels if out_channels is None else out_channels, kernel_size, stride,
                         padding, **kwargs)

    def phase_kernels(self) -> list[list[torch.Tensor]]:
        """kernels[a][b]: the 2×2 kernel producing output rows 2i+a, columns 2j+b from
        x[i-1+a : i+1+a, j-1+b : j+1+b]."""

        def merge(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
            first, middle, last = w.unbind(dim)
            return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)

        return [list(merge(rows, 3)) for rows in merge(self.weight, 2)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.kernel_size, self.stride, self.padding, self.groups, self.padding_mode) != (
            (3, 3), (1, 1), (1, 1), 1, "zeros"
        ):
            return super().forward(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        height, width = x.shape[-2:]
        padded = F.pad(x, (1, 1, 1, 1))
        phases = [
            [F.conv2d(padded[:, :, a : a + height + 1, b : b + width + 1], kernel, self.bias)
             for b, kernel in enumerate(row)]
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
        out = torch.empty(batch, channels, 2 * height, 2 * width, dtype=dtype, device=x.device,
                          memory_format=memory_format)
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

    def tile_steps(self) -> list[TileStep]:
        return [TileStep(self, self.conv.out_channels, halo=(1, 1), scale=2.0)]

    def stream_roles(self) -> list[StreamRole]:
        return [StreamRole(carries=(self.conv,), measured=(self,))]


class _Level(nn.Module):
    """One resolution level: residual blocks, then the resampler to the next level (none after the last)."""

    def parts(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts():
            x = part(x)
        return x

    def tile_steps(self) -> list[TileStep]:
        return [step for part in self.parts() for step in part.tile_steps()]

    def stream_roles(self) -> list[StreamRole]:
        return [role for part in self.parts() for role in part.stream_roles()]


# The two level classes are named as the config's down_block_types/up_block_types name them.
class DownEncoderBlock2D(_Level):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, downsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(ResidualBlock(a, b, groups) for a, b in pairwise(channels))
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if downsample else None

    def parts(self) -> list[nn.Module]:
        return [*self.resnets, *(self.downsamplers or ())]


class UpDecoderBlock2D(_Level):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, upsample: bool):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_layers
        self.resnets = nn.ModuleList(ResidualBlock(a, b, groups) for a, b in pairwise(channels))
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def parts(self) -> list[nn.Module]:
        return [*self.resnets, *(self.upsamplers or ())]


# Named as diffusers names the VAE's mid block, so tools that select modules by class name (gradient
# checkpointing checks, device maps) treat ours alike.
class UNetMidBlock2D(nn.Module):
    """Residual → attention → residual at the lowest resolution, where attention is affordable."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(channels, channels, groups),
                                      ResidualBlock(channels, channels, groups)])
        # diffusers keeps the slot even without attention: attentions.0 names the same module in both
        self.attentions = nn.ModuleList([AttentionBlock(channels, groups) if add_attention else None])
        self.gradient_checkpointing = False

    def parts(self) -> list[nn.Module]:
        return [part for part in (self.resnets[0], self.attentions[0], self.resnets[1]) if part is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts():
            x = checkpointed(self, part, x)
        return x

    def tile_steps(self) -> list[TileStep]:
        # attention sees every position: the whole block runs at once, at the lowest resolution, where it is small
        return [TileStep(self, self.resnets[1].conv2.out_channels, whole=True)]

    def stream_roles(self) -> list[StreamRole]:
        return [role for part in self.parts() for role in part.stream_roles()]
