"""Tiled encode and decode that give the untiled result, at bounded memory.

Tiling a VAE is easy for its convolutions (give each tile a halo as wide as their reach) and
hard for its GroupNorms, whose mean and variance span the whole image: diffusers normalises
every tile with its own statistics, so tiles come out in slightly different tones. Here every
GroupNorm gets the statistics of the whole image:

1. The network is a sequence of *stages* (residual blocks, up/downsamplers, ...). An activation
   between stages is kept whole in memory only if it is at most ``max_buffer_bytes``; the stages
   between two kept activations form a *segment*.
2. A segment runs over tiles of its input, each with a halo wider than the segment's reach.
   Its first GroupNorm has no statistics yet: a pass over the tiles adds up, in float64, the sum
   and sum of squares of that GroupNorm's input over each tile's core (each pixel is in exactly one
   core), then stops the tile. The next pass uses those statistics and collects the next
   GroupNorm's, and so on; the last pass writes the segment's output.
3. A stage with attention (the mid block) sees every position at once; it runs untiled, at the
   lowest resolution, where it is small.

So the output matches the untiled network to float rounding, memory stays near two kept
activations plus one tile's working set, and the price is recomputation inside segments whose
intermediate activations were too big to keep. Tiling is for inference: it runs without autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .network import Decoder, Downsample, Encoder, GroupNorm, Head, Level, ResidualBlock, UNetMidBlock2D, Upsample, check_input


@dataclass(frozen=True)
class TilingConfig:
    tile_size: int = 512  # tile side in image pixels
    max_buffer_bytes: int = 1 << 30  # an intermediate activation larger than this is recomputed, not kept

    def with_overrides(self, tile_size: int | None, max_buffer_bytes: int | None) -> "TilingConfig":
        config = replace(
            self,
            tile_size=self.tile_size if tile_size is None else tile_size,
            max_buffer_bytes=self.max_buffer_bytes if max_buffer_bytes is None else max_buffer_bytes,
        )
        if config.tile_size < 8 or config.max_buffer_bytes < 1:
            raise ValueError(f"tile_size must be >= 8 and max_buffer_bytes >= 1, got {config}")
        return config


@dataclass
class _Stage:
    module: nn.Module
    scale: float  # output resolution / input resolution
    reach: int  # how many input pixels beyond a pixel can change it (None-like -1: everything)
    out_channels: int

    @property
    def is_global(self) -> bool:
        return self.reach < 0


def _stage(module: nn.Module) -> _Stage:
    if isinstance(module, UNetMidBlock2D):
        return _Stage(module, 1.0, -1, module.res2.conv2.out_channels)
    if isinstance(module, ResidualBlock):
        return _Stage(module, 1.0, 2, module.conv2.out_channels)
    if isinstance(module, Upsample):
        return _Stage(module, 2.0, 1, module.conv.out_channels)
    if isinstance(module, Downsample):
        return _Stage(module, 0.5, 2, module.conv.out_channels)
    if isinstance(module, nn.Conv2d):
        return _Stage(module, 1.0, module.kernel_size[0] // 2, module.out_channels)
    if isinstance(module, Head):
        return _Stage(module, 1.0, 1, module.out_channels)
    raise TypeError(f"no tiling rule for {type(module).__name__}")


def network_stages(network: Encoder | Decoder) -> list[_Stage]:
    """The network's stages with each level opened up into its residual blocks and resampler."""
    modules = [m for stage in network.stages() for m in (stage.stages() if isinstance(stage, Level) else [stage])]
    return [_stage(m) for m in modules]


def plan_segments(stages: list[_Stage], shape: tuple[int, ...], itemsize: int, budget: int) -> list[list[_Stage]]:
    """Split stages into segments; a segment ends where its output is small enough to keep whole."""
    batch, _, height, width = shape
    segments, current = [], []
    scale = 1.0
    for index, stage in enumerate(stages):
        if stage.is_global:  # its input and output are kept whole, whatever they weigh
            if current:
                segments.append(current)
                current = []
            segments.append([stage])
            scale *= stage.scale
            continue
        current.append(stage)
        scale *= stage.scale
        out_bytes = batch * stage.out_channels * height * scale * width * scale * itemsize
        if out_bytes <= budget or index == len(stages) - 1:
            segments.append(current)
            current = []
    return segments


class _StopTile(Exception):
    """Raised inside a tile once the GroupNorm whose statistics are being gathered has seen its core."""


class _GlobalGroupNorm:
    """Set as each GroupNorm's ``statistics``: normalise with whole-image statistics, or gather them."""

    def __init__(self) -> None:
        self.stats: dict[nn.GroupNorm, tuple[torch.Tensor, torch.Tensor]] = {}
        self.collecting: nn.GroupNorm | None = None
        self.sums: torch.Tensor | None = None  # (batch, groups, 3): count, sum, sum of squares
        # the current tile's core as fractions of its crop (top, bottom, left, right): the same at every resolution
        self.core_fraction = (0.0, 1.0, 0.0, 1.0)
        self.untiled = False  # inside a global stage every GroupNorm sees the whole image anyway

    def normalize(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        groups = norm.num_groups
        if self.untiled:
            return F.group_norm(x, groups, norm.weight, norm.bias, norm.eps)
        if norm in self.stats:
            # (x - mean) * rstd * weight + bias, folded into one per-channel scale and shift
            mean, rstd = self.stats[norm]
            per_channel = channels // groups
            scale = rstd.repeat_interleave(per_channel, dim=1) * norm.weight.double()
            shift = norm.bias.double() - mean.repeat_interleave(per_channel, dim=1) * scale
            return torch.addcmul(shift[..., None, None].to(x.dtype), x, scale[..., None, None].to(x.dtype))
        if self.collecting is None or self.collecting is norm:
            top, bottom, left, right = self.core_fraction
            core = x[:, :, round(top * height) : round(bottom * height), round(left * width) : round(right * width)]
            values = core.reshape(batch, groups, -1).double()
            sums = torch.stack(
                [torch.full_like(values[..., 0], values.shape[-1]), values.sum(-1), values.square().sum(-1)], -1
            )
            self.sums = sums if self.sums is None else self.sums + sums
            self.collecting = norm
            raise _StopTile
        raise RuntimeError("GroupNorm reached out of order while gathering statistics")

    def finish_collecting(self, eps_of: nn.GroupNorm) -> None:
        count, total, squares = self.sums.unbind(-1)
        mean = total / count
        var = (squares / count - mean.square()).clamp_min(0)
        self.stats[self.collecting] = (mean, torch.rsqrt(var + eps_of.eps))
        self.collecting, self.sums = None, None


def _run_segment(
    segment: list[_Stage], x: torch.Tensor, tile: int, norms: _GlobalGroupNorm
) -> torch.Tensor:
    """Run `segment` over tiles of `x` (tile side `tile`, in `x`'s pixels), gathering GroupNorm statistics first."""
    scales = [1.0]
    for stage in segment:
        scales.append(scales[-1] * stage.scale)
    # Every tile boundary must land on whole pixels at the segment's coarsest resolution.
    align = int(round(1 / min(scales)))
    reach = sum(stage.reach / s for stage, s in zip(segment, scales))
    halo = align * math.ceil(math.ceil(reach) / align)
    tile = max(align, tile // align * align)
    out_scale = scales[-1]
    height, width = x.shape[-2:]

    def run(crop: torch.Tensor) -> torch.Tensor:
        for stage in segment:
            crop = stage.module(crop)
        return crop

    out = None
    while True:
        for top in range(0, height, tile):
            for left in range(0, width, tile):
                bottom, right = min(top + tile, height), min(left + tile, width)
                y0, y1 = max(0, top - halo), min(height, bottom + halo)
                x0, x1 = max(0, left - halo), min(width, right + halo)
                crop_h, crop_w = y1 - y0, x1 - x0
                norms.core_fraction = (
                    (top - y0) / crop_h, (bottom - y0) / crop_h, (left - x0) / crop_w, (right - x0) / crop_w
                )
                try:
                    result = run(x[:, :, y0:y1, x0:x1])
                except _StopTile:
                    continue
                if out is None:
                    out_shape = (x.shape[0], result.shape[1], int(height * out_scale), int(width * out_scale))
                    out = torch.empty(out_shape, dtype=result.dtype, device=result.device)
                core = result[
                    :, :,
                    int((top - y0) * out_scale) : int((bottom - y0) * out_scale),
                    int((left - x0) * out_scale) : int((right - x0) * out_scale),
                ]
                out[:, :, int(top * out_scale) : int(bottom * out_scale), int(left * out_scale) : int(right * out_scale)] = core
        if norms.collecting is None:
            return out
        norms.finish_collecting(norms.collecting)


def _run(stages: list[_Stage], network: nn.Module, x: torch.Tensor, tile_in_pixels: float, config: TilingConfig):
    segments = plan_segments(stages, tuple(x.shape), x.element_size(), config.max_buffer_bytes)
    norms = _GlobalGroupNorm()
    group_norms = [m for m in network.modules() if isinstance(m, GroupNorm)]
    for norm in group_norms:
        norm.statistics = norms
    try:
        with torch.no_grad():
            scale = 1.0
            for segment in segments:
                if segment[0].is_global:
                    norms.untiled = True
                    x = segment[0].module(x)
                    norms.untiled = False
                else:
                    tile = max(1, int(tile_in_pixels * scale))
                    x = _run_segment(segment, x, tile, norms)
                for stage in segment:
                    scale *= stage.scale
        return x
    finally:
        for norm in group_norms:
            del norm.statistics


def tiled_encode(encoder: Encoder, x: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    """``encoder(x)`` computed tile by tile; same result to float rounding."""
    check_input(x, encoder.in_channels, encoder.downsampling_factor, "image")
    return _run(network_stages(encoder), encoder, x, config.tile_size, config)


def tiled_decode(decoder: Decoder, z: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    """``decoder(z)`` computed tile by tile; same result to float rounding."""
    check_input(z, decoder.latent_channels, 1, "latents")
    return _run(network_stages(decoder), decoder, z, config.tile_size / decoder.upsampling_factor, config)
