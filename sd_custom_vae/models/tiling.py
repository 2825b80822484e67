"""Tiled encode and decode that give the untiled result, at bounded memory, at nearly untiled speed.

Tiling a VAE is easy for its convolutions (give each tile a halo as wide as their reach) and hard
for its GroupNorms, whose mean and variance span the whole image: diffusers normalises every tile
with its own statistics, so tiles come out in slightly different tones. Here the network runs one
*step* at a time over the whole image, each step tile by tile:

1. The steps are the network's own: each block of ``Encoder.blocks()``/``Decoder.blocks()`` says how it
   runs (``tile_steps()``: its reach, its scale, the GroupNorm it opens with; a residual block as its two
   halves), so that a step opens with at most one GroupNorm, applied to a stored activation.
2. Every activation between steps is stored whole: in memory while it fits the budget, else in a
   file on disk (written and read tile by tile, so it never sits in the process's memory). While a
   step writes its output, the per-group sums that the next GroupNorm needs are added up (each tile's
   mean and variance, combined in float64), so that GroupNorm normalises every tile with the statistics
   of the whole image.
3. Each tile reads its input with a halo as wide as the step's reach, runs the step on it, and keeps
   the core: every convolution is computed once, no activation is recomputed. A step's tile side is
   chosen from its own working set (an upsample writes four output pixels per input pixel).
4. A step with attention (the mid block) sees every position at once; it runs untiled, at the
   lowest resolution, where it is small.

So the output matches the untiled network to float rounding; memory stays near the budget (the stored
activations that fit, plus one tile's working set); time is the untiled time plus halos and disk I/O.
Tiling is for inference: it runs without autograd. The modules are called as the network calls them,
so hooks on them (CPU or leaf-level group offload, layerwise casting) keep working.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..base.errors import UserError
from ..network import Decoder, Encoder, TileStep

DEFAULT_MAX_MEMORY = 2 << 30  # bytes of activations (stored and working) a tiled call may hold


@dataclass(frozen=True)
class TilingConfig:
    tile_size: int = 512  # tiling starts above this image side (diffusers: config.sample_size)
    max_memory: int = DEFAULT_MAX_MEMORY  # activations kept in memory, plus a tile's working set
    spill_dir: str | None = None  # where activations that do not fit go (default: the system's temporary folder)

    def with_overrides(self, **overrides) -> TilingConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        for key in ("tile_size", "max_memory"):
            value = overrides.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"enable_tiling({key}=...) takes a whole number (pixels, bytes), got {value!r}")
        if "spill_dir" in overrides:
            overrides["spill_dir"] = str(overrides["spill_dir"])
        config = replace(self, **overrides)
        if config.tile_size < 8 or config.max_memory < (1 << 20):
            raise UserError(f"tile_size must be at least 8 and max_memory at least 1 MiB, got {config}")
        return config


class TilingMethods:
    """``CustomAutoencoderKL``'s tiling interface: ``enable_tiling`` and ``AutoencoderKL``'s attribute names for the
    tile size, all kept in one ``TilingConfig``."""

    tiling: TilingConfig
    downsampling_factor: int

    def enable_tiling(
        self, tile_size: int | None = None, max_memory: int | None = None, spill_dir: str | os.PathLike | None = None
    ) -> None:
        """Encode and decode large images tile by tile, without seams: GroupNorm statistics span the whole image,
        so the tiled result equals the untiled one up to float rounding (see this module).

        Args:
            tile_size: Images larger than this many pixels are tiled (default ``config.sample_size``).
            max_memory: About how many bytes of activations to hold (default 2 GiB); the rest goes to a file.
            spill_dir: The folder of that temporary file (default: the system's).
        """
        self.tiling = self.tiling.with_overrides(tile_size=tile_size, max_memory=max_memory, spill_dir=spill_dir)
        self.use_tiling = True

    # AutoencoderKL's names for the tile size, which users and some pipelines set directly
    @property
    def tile_sample_min_size(self) -> int:
        return self.tiling.tile_size

    @tile_sample_min_size.setter
    def tile_sample_min_size(self, size: int) -> None:
        self.tiling = self.tiling.with_overrides(tile_size=size)

    @property
    def tile_latent_min_size(self) -> int:
        return self.tiling.tile_size // self.downsampling_factor

    @tile_latent_min_size.setter
    def tile_latent_min_size(self, size: int) -> None:
        self.tiling = self.tiling.with_overrides(tile_size=size * self.downsampling_factor)


# -- stored activations ---------------------------------------------------------------------------------


class Store:
    """One activation (N, C, H, W), whole: a tensor in memory, or a file on disk laid out (N, H, W, C) so that a
    tile's row of pixels is one contiguous read. Collects per-group sums for the GroupNorm that reads it."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, groups: int, in_memory: bool, spill_dir: str | None):
        self.shape, self.dtype, self.groups = shape, dtype, groups
        self.sums = torch.zeros(shape[0], groups, 3, dtype=torch.float64)  # count, sum, sum of squares
        self.tensor = torch.empty(shape, dtype=dtype) if in_memory else None
        self.file = None
        if not in_memory:
            self.file = tempfile.TemporaryFile(dir=spill_dir)  # gone when closed, even after a crash
            self.file.truncate(math.prod(shape) * dtype.itemsize)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def write(self, y0: int, x0: int, tile: torch.Tensor) -> None:
        n, c, h, w = tile.shape
        if c % self.groups == 0:  # only such activations can feed a GroupNorm (images and latents cannot)
            # the tile's own mean and variance in one pass over it (no float64 copy of a tile that may be
            # hundreds of MB), combined across tiles as float64 sums
            values = tile.unflatten(1, (self.groups, -1))  # a view: the tile may be a crop of a larger result
            values = values.to(torch.promote_types(values.dtype, torch.float32))
            variance, mean = torch.var_mean(values, dim=(2, 3, 4), correction=0)
            count = torch.full_like(mean, tile[0].numel() // self.groups, dtype=torch.float64)
            mean, variance = mean.double(), variance.double()
            self.sums += torch.stack([count, count * mean, count * (variance + mean.square())], -1)
        if self.tensor is not None:
            self.tensor[:, :, y0 : y0 + h, x0 : x0 + w] = tile
            return
        _, _, height, width = self.shape
        rows = tile.permute(0, 2, 3, 1).contiguous().numpy()  # (N, h, w, C)
        for b in range(n):
            for r in range(h):
                self.file.seek(((b * height + y0 + r) * width + x0) * c * self.dtype.itemsize)
                self.file.write(rows[b, r].tobytes())

    def read(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor[:, :, y0:y1, x0:x1]
        n, c, height, width = self.shape
        out = torch.empty(n, y1 - y0, x1 - x0, c, dtype=self.dtype)
        view = out.numpy()
        for b in range(n):
            for r in range(y1 - y0):
                self.file.seek(((b * height + y0 + r) * width + x0) * c * self.dtype.itemsize)
                self.file.readinto(memoryview(view[b, r]).cast("B"))
        return out.permute(0, 3, 1, 2)

    def whole(self) -> torch.Tensor:
        return self.tensor if self.tensor is not None else self.read(0, self.shape[2], 0, self.shape[3]).contiguous()

    def statistics(self, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) per sample and group, as GroupNorm computes them over the whole activation."""
        count, total, squares = self.sums.unbind(-1)
        mean = total / count
        return mean, torch.rsqrt((squares / count - mean.square()).clamp_min(0) + eps)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.tensor = self.file = None


class WholeImageStatistics:
    """Set as a GroupNorm's ``statistics`` while the step it opens runs: normalise each tile with the statistics
    of the whole activation the GroupNorm reads (``source``)."""

    def __init__(self, source: Store):
        self.source = source

    def normalize(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        mean, rstd = self.source.statistics(norm.eps)
        per_channel = x.shape[1] // norm.num_groups
        # (x - mean) * rstd * weight + bias, folded into one per-channel scale and shift
        scale = rstd.repeat_interleave(per_channel, dim=1) * norm.weight.double()
        shift = norm.bias.double() - mean.repeat_interleave(per_channel, dim=1) * scale
        return torch.addcmul(shift[..., None, None].to(x.dtype), x, scale[..., None, None].to(x.dtype))


# -- running the steps ------------------------------------------------------------------------------------


class _Runner:
    def __init__(self, steps: list[TileStep], config: TilingConfig, largest_tile: int, x: torch.Tensor):
        self.steps, self.config, self.largest_tile = steps, config, largest_tile
        # the group count of the GroupNorms that read the stored activations
        self.groups = next(step.norm.num_groups for step in steps if step.norm is not None)
        self.dtype, self.device = x.dtype, x.device  # stores live in host memory or on disk, tiles run on the device
        self.in_memory = 0  # bytes of stores held in memory

    def tile_side(self, step: TileStep, n: int, in_channels: int) -> int:
        """Output pixels per tile side such that the step's working set fits half the budget: per output pixel
        its input crop, GroupNorm and activation (in_channels per input pixel, 1/scale² of them per output
        pixel), and the convolution's output, the upsample's phases and their interleaving (out_channels)."""
        per_pixel = 3 * n * self.dtype.itemsize * (in_channels / step.scale**2 + step.out_channels)
        side = int(math.sqrt(self.config.max_memory // 2 / per_pixel))
        return max(16, min(self.largest_tile, side) // 8 * 8)

    def store(self, shape: tuple[int, ...]) -> Store:
        nbytes = math.prod(shape) * self.dtype.itemsize
        # half the budget for stores kept in memory, the other half for a tile's working set
        in_memory = self.in_memory + nbytes <= self.config.max_memory // 2
        self.in_memory += nbytes if in_memory else 0
        return Store(shape, self.dtype, self.groups, in_memory, self.config.spill_dir)

    def release(self, store: Store) -> None:
        if store.tensor is not None:
            self.in_memory -= store.nbytes
        store.close()

    def run_step(self, step: TileStep, inputs: list[Store]) -> Store:
        n, _, height, width = inputs[0].shape
        out_h, out_w = int(height * step.scale), int(width * step.scale)
        out = self.store((n, step.out_channels, out_h, out_w))
        if step.whole:
            out.write(0, 0, step.run(inputs[0].whole().to(self.device)).cpu())
            return out
        side = self.tile_side(step, n, inputs[0].shape[1])
        if step.scale > 1:
            side = max(int(step.scale), side // int(step.scale) * int(step.scale))  # whole input pixels per tile
        before, after = step.halo
        for oy in range(0, out_h, side):
            for ox in range(0, out_w, side):
                oy1, ox1 = min(oy + side, out_h), min(ox + side, out_w)
                # the input region these output pixels come from, with the step's halo, inside the image
                iy0, ix0 = max(0, int(oy / step.scale) - before), max(0, int(ox / step.scale) - before)
                iy1 = min(height, math.ceil(oy1 / step.scale) + after)
                ix1 = min(width, math.ceil(ox1 / step.scale) + after)
                result = step.run(*(store.read(iy0, iy1, ix0, ix1).to(self.device) for store in inputs))
                ry, rx = oy - int(iy0 * step.scale), ox - int(ix0 * step.scale)
                out.write(oy, ox, result[:, :, ry : ry + oy1 - oy, rx : rx + ox1 - ox].cpu())
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        current = self.store(tuple(x.shape))
        current.write(0, 0, x.cpu())
        block_input = None  # a residual block's input, kept until its second half has run
        try:
            for step in self.steps:
                inputs = [current, block_input] if step.reads_block_input else [current]
                if step.norm is not None:  # the GroupNorm that opens the step sees the whole activation's statistics
                    step.norm.statistics = WholeImageStatistics(current)
                try:
                    output = self.run_step(step, inputs)
                finally:
                    if step.norm is not None:
                        step.norm.__dict__.pop("statistics", None)
                if step.keeps_input:
                    block_input = current
                else:
                    for store in {id(s): s for s in inputs}.values():
                        self.release(store)
                    block_input = None
                current = output
            return current.whole().to(self.device, copy=True)
        finally:
            for store in (current, block_input):
                if store is not None:
                    store.close()


def _run(network: Encoder | Decoder, x: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    steps = [step for block in network.blocks() for step in block.tile_steps()]
    with torch.no_grad():
        return _Runner(steps, config, config.tile_size, x).run(x)


def tiled_encode(encoder: Encoder, x: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    """``encoder(x)`` computed step by step, tile by tile; the same result to float rounding."""
    return _run(encoder, x, config)


def tiled_decode(decoder: Decoder, z: torch.Tensor, config: TilingConfig) -> torch.Tensor:
    """``decoder(z)`` computed step by step, tile by tile; the same result to float rounding."""
    return _run(decoder, z, config)
