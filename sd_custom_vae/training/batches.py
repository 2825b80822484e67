"""The batches a training process sees, step after step: the same after a resume as without one.

Training runs in phases: crops of ``resolution`` pixels, then (with ``final_resolution``) the last
``final_fraction`` of the steps on larger crops, fewer per batch so that a step costs about the same.
Within a phase, batch ``b`` of process ``rank`` holds crops disjoint from every other process's and
batch's (``data.CropBatches``; a stream is split between processes, ``data.StreamCrops``), and is a pure
function of the seed and ``b``: a run resumed at any step continues with exactly the batches it would
have seen. A DataLoader's worker processes (``num_workers``) decode and crop ahead of the training step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from ..data import Augmentation, CropBatches, ImageData, RandomCrops, StreamCrops
from .config import TrainConfig


def phases(config: TrainConfig) -> list[tuple[int, int, int]]:
    """(first step, crop side, batch size) of each phase."""
    first = [(0, config.resolution, config.batch_size)]
    if not config.final_resolution:
        return first
    switch = round(config.steps * (1 - config.final_fraction))
    batch = max(1, round(config.batch_size * (config.resolution / config.final_resolution) ** 2))
    return first + [(switch, config.final_resolution, batch)]


class BatchFeed:
    def __init__(self, config: TrainConfig, data: ImageData, rank: int, processes: int, device: torch.device,
                 step: int):
        self.config, self.data, self.rank, self.processes, self.device = config, data, rank, processes, device
        self.phase = self._phase(step)
        self.batches = self._batches(step)

    @property
    def batch_size(self) -> int:
        """Images per micro-batch in the current phase."""
        return phases(self.config)[self.phase][2]

    def _phase(self, step: int) -> int:
        return max(i for i, (first, _, _) in enumerate(phases(self.config)) if step >= first)

    def batch(self, step: int) -> torch.Tensor:
        """The next micro-batch of optimizer step `step` (called once per gradient-accumulation micro-step)."""
        if self._phase(step) != self.phase:  # the final phase begins: larger crops
            self.phase = self._phase(step)
            self.batches = self._batches(step)
        return next(self.batches)

    def _batches(self, step: int) -> Iterator[torch.Tensor]:
        config = self.config
        first, resolution, batch_size = phases(config)[self.phase]
        start = (step - first) * config.gradient_accumulation
        seed = config.seed + 1_000 * self.phase  # each phase draws its own crops
        augmentation = Augmentation(min_scale=config.min_crop_scale, hue_rotation=config.hue_rotation)
        if self.data.streaming:
            stream = StreamCrops(self.data.train, resolution, self.data.val_fraction, seed, self.rank, self.processes,
                                 augmentation)
            return stream.batches(batch_size, start)
        crops = RandomCrops(self.data.train, resolution, seed=seed, augmentation=augmentation)
        loader = torch.utils.data.DataLoader(
            CropBatches(crops, batch_size, self.rank, self.processes),
            batch_size=None,
            sampler=itertools.count(start),  # batch numbers: the workers only decode and crop
            num_workers=config.num_workers,
            persistent_workers=config.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)
