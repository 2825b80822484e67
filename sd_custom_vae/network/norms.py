"""GroupNorm as the SD VAE uses it, with a door for exact tiling (whole-image statistics, ``models/tiling.py``)."""

from __future__ import annotations

import torch
from torch import nn

# LDM's GroupNorm epsilon. torch's default (1e-5) gives visibly different numbers on the same weights.
GROUP_NORM_EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose statistics can be supplied from outside.

    Exact tiling normalises each tile with statistics of the whole image; it sets ``statistics`` to an
    object that computes the normalisation instead (see ``models/tiling.py``). Keeping this in the class's
    own ``forward`` (rather than replacing ``forward`` on the instance) leaves hooks that wrap the
    instance's forward (offloading, casting) in place.
    """

    statistics = None  # set per instance by tiling while it runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.statistics is not None:
            return self.statistics.normalize(self, x)
        return super().forward(x)


def group_norm(channels: int, groups: int) -> GroupNorm:
    return GroupNorm(groups, channels, eps=GROUP_NORM_EPS)
