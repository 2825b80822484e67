"""Validation during a run: PSNR/SSIM (and the objective's own numbers) on the fixed held-out crops, with the
weight average when there is one, and the pictures: a reconstruction grid every ``--sample-every`` steps and
the final reconstruction figure."""

from __future__ import annotations

from pathlib import Path

import torch

from ..evaluation.figures import grid, reconstruction_figure, save_png
from ..evaluation.quality import Resizing, decode, encode_mean, reconstruction_quality
from ..models.run_files import RECONSTRUCTIONS, SAMPLES_DIR
from .objectives import Objective
from .tracking import Tracker


class Validation:
    def __init__(self, crops: torch.Tensor, objective: Objective, output: Path, tracker: Tracker):
        self.crops, self.objective, self.output, self.tracker = crops, objective, output, tracker
        self.history: list[dict] = []  # {"step", "psnr", "ssim", ...} per validation

    def __call__(self, model, step: int, sample: bool = False, final: bool = False) -> dict:
        """The validation metrics of `model` (with the average already swapped in), logged; with `sample` the grid of
        originals and reconstructions in samples/, with `final` the run's reconstruction figure."""
        metrics, reconstructions = reconstruction_quality(model, self.crops)
        metrics.update(self.objective.metrics(model, self.crops))
        self.history.append({"step": step, **metrics})
        self.tracker.log({f"validation/{name}": value for name, value in metrics.items()}, step)
        picture = grid([self.crops, reconstructions], labels=["original", f"step {step}"])
        self.tracker.log_image("validation/reconstructions", picture, step)
        if final:
            resizing = Resizing(model.downsampling_factor)
            resized = decode(resizing, encode_mean(resizing, self.crops)).clamp(-1, 1)
            save_png(reconstruction_figure(self.crops, reconstructions, resized), self.output / RECONSTRUCTIONS)
        elif sample:
            save_png(picture, self.output / SAMPLES_DIR / f"step-{step:06d}.png")
        return metrics
