"""What a block tells the algorithms that walk the whole network about itself.

Two such algorithms run over an encoder or decoder block by block: exact tiling (``models/tiling.py``)
and the exact float16 rescale (``models/fp16_rescale.py``). Neither knows the block classes: each block
describes itself with ``tile_steps()`` and ``stream_roles()``, so a new kind of block is one class
with those two methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class TileStep:
    """One step of a block as exact tiling runs it: ``run(*tiles)`` on crops of whole stored activations.

    A step opens with at most one GroupNorm (``norm``), applied to its first input; tiling hands that norm
    the statistics of the whole activation, so every tile is normalised as the untiled network would.
    """

    run: Callable
    out_channels: int
    norm: nn.GroupNorm | None = None
    halo: tuple[int, int] = (0, 0)  # input pixels of context each tile needs, before and after it
    scale: float = 1.0  # output side / input side
    whole: bool = False  # sees every position at once (attention): runs on the whole activation, untiled
    reads_block_input: bool = False  # also reads the block's input (second input), for the residual sum
    keeps_input: bool = False  # its input is read again by the next step (as that step's block input)


@dataclass(frozen=True)
class StreamRole:
    """How a layer reads and writes the *residual stream*: the activation that ``conv_in`` writes, each
    residual and attention block adds to, and each resampler or shortcut conv carries to the next level.

    GroupNorm ignores the scale of its input, so the stream can be multiplied by any s > 0 between two
    layers that write into it (see ``models/fp16_rescale.py``): ``writes`` are scaled by the stream's new scale,
    ``carries`` (input: the incoming stream, output: a new stream) by new/old, and a ``branch`` conv whose
    output feeds only a GroupNorm can be scaled freely.
    """

    reads: tuple[nn.GroupNorm, ...] = ()  # norms applied to the incoming stream
    writes: tuple[nn.Module, ...] = ()  # layers whose output is (or is added to) the outgoing stream
    carries: tuple[nn.Module, ...] = ()  # layers that map the incoming stream into a new one
    branch: tuple[nn.Module, nn.GroupNorm] | None = None  # (conv, the only norm reading its output)
    measured: tuple[nn.Module, ...] = ()  # layers whose outputs hold the outgoing stream's values

    @property
    def starts_stream(self) -> bool:
        return bool(self.carries)
