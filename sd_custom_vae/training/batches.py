"""The batches a training process sees, step after step: the same after a resume as without one.

Training runs in phases: crops of ``resolution`` pixels, then (with ``final_resolution``) the last
``final_fraction`` of the steps on larger crops, fewer per batch so that a step sees about as many pixels; with
``final_alternate_resolution`` the final phase's steps take turns between its two sides. Each side of a phase
has its own stream of batches: its batch ``b`` of process ``rank`` holds crops disjoint from every other
process's and batch's (``data.CropBatches``; a stream is split between processes, ``data.StreamCrops``), and is
a pure function of the seed and ``b``: a run resumed at any step continues with exactly the batches it would
have seen. A DataLoader's worker processes (``num_workers``) decode and crop ahead of the training step.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import torch

from ..data import Augmentation, CropBatches, ImageData, RandomCrops, StreamCrops, upscales_too_far
from .config import TrainConfig


def phases(config: TrainConfig) -> list[tuple[int, list[tuple[int, int]]]]:
    """(first step, [(crop side, batch size), ...]) of each phase; a phase's steps take turns between its sides."""
    first = [(0, [(config.resolution, config.batch_size)])]
    if not config.final_resolution:
        return first
    switch = round(config.steps * (1 - config.final_fraction))
    sides = [config.final_resolution] + ([config.final_alternate_resolution]
                                         if config.final_alternate_resolution else [])
    return first + [(switch, [(side, max(1, round(config.batch_size * (config.resolution / side) ** 2)))
                              for side in sides])]


def final_phase_for(config: TrainConfig, data: ImageData) -> TrainConfig:
    """`config` without the final phase's sides that `data`'s images are too small for, each with a warning: the
    final phase is a refinement a preset asks for, and on images this small it would train on blown-up copies, so
    the run goes on without it (and train_config.json records that)."""
    largest = data.largest_side
    if config.final_resolution and largest and upscales_too_far(config.final_resolution, largest):
        warnings.warn(f"{data.description}: images too small for the final {config.final_resolution}px crops "
                      f"(largest shorter side {largest} px); training on {config.resolution}px crops throughout",
                      stacklevel=3)
        return config.replace(final_resolution=None, final_alternate_resolution=None)
    alternate = config.final_alternate_resolution
    if alternate and largest and upscales_too_far(alternate, largest):
        warnings.warn(f"{data.description}: images too small for {alternate}px crops; the final phase trains on "
                      f"{config.final_resolution}px ones only", stacklevel=3)
        return config.replace(final_alternate_resolution=None)
    return config


class BatchFeed:
    def __init__(self, config: TrainConfig, data: ImageData, rank: int, processes: int, device: torch.device,
                 step: int):
        self.config, self.data, self.rank, self.processes, self.device = config, data, rank, processes, device
        self.phases = phases(config)
        self.phase = self._phase(step)
        self.streams = self._streams(step)
        self.batch_size = self.phases[self.phase][1][0][1]  # images per micro-batch of the latest batch

    def _phase(self, step: int) -> int:
        return max(i for i, (first, _) in enumerate(self.phases) if step >= first)

    def batch(self, step: int) -> torch.Tensor:
        """The next micro-batch of optimizer step `step` (called once per gradient-accumulation micro-step)."""
        if self._phase(step) != self.phase:  # the final phase begins: larger crops
            self.phase = self._phase(step)
            self.streams = self._streams(step)
        first, sides = self.phases[self.phase]
        turn = (step - first) % len(sides)
        self.batch_size = sides[turn][1]
        return next(self.streams[turn])

    def _streams(self, step: int) -> list[Iterator[torch.Tensor]]:
        """Each side's batches of the current phase, from the first that a step at or after `step` takes."""
        first, sides = self.phases[self.phase]
        turns, accumulation = len(sides), self.config.gradient_accumulation
        # side k serves the phase's steps k, k + turns, ...: the next one at or after `step` is its batch number
        return [self._batches(side, batch_size, (step - first + turns - 1 - k) // turns * accumulation,
                              seed=self.config.seed + 1_000 * self.phase + (side if turns > 1 else 0))
                for k, (side, batch_size) in enumerate(sides)]

    def _batches(self, resolution: int, batch_size: int, start: int, seed: int) -> Iterator[torch.Tensor]:
        """Batches of `resolution`-px crops from batch number `start` on, drawn by `seed` (each phase and side its
        own)."""
        config = self.config
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
