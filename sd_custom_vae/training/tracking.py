"""Live experiment tracking, as diffusers' training scripts do it: ``--report-to tensorboard|wandb|all`` through
accelerate's trackers, with the run's whole configuration as hyperparameters.

Logged: every loss term, the learning rate, the gradient norm and images per second at each step; validation
PSNR/SSIM (and the objective's numbers) and the reconstruction grid at each validation. The logs go into the
run's ``tracking/`` folder. wandb runs offline unless an account is set up (``wandb login`` or WANDB_API_KEY)
or WANDB_MODE says otherwise; ``wandb sync`` uploads an offline run later.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..base.errors import UserError
from ..models.run_files import TRACKING_DIR
from .config import TrainConfig

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def requested(report_to: str) -> list[str]:
    return list(PACKAGES) if report_to == "all" else [] if report_to == "none" else [report_to]


def check_installed(report_to: str) -> None:
    """Refuse, before a run starts, a tracker whose package is missing."""
    for name in requested(report_to):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"--report-to {report_to} needs the {PACKAGES[name]} package: "
                             f"pip install {PACKAGES[name]} (or the extra: pip install 'sd-custom-vae[tracking]')")


def _hyperparameters(config: TrainConfig) -> dict:
    """The whole config, flattened to the scalars and strings trackers take (the model's keys as model.KEY)."""
    flat = {}
    for key, value in config.to_dict().items():
        items = {f"{key}.{k}": v for k, v in value.items()} if isinstance(value, dict) else {key: value}
        for name, item in items.items():
            flat[name] = item if isinstance(item, (int, float, str, bool)) else json.dumps(item)
    return flat


class Tracker:
    """The run's trackers (none, one or both), on the main process; ``where`` says where to look."""

    def __init__(self, accelerator, config: TrainConfig, run: Path):
        self.accelerator = accelerator
        self.names = requested(config.report_to) if accelerator.is_main_process else []
        self.folder = run / TRACKING_DIR
        self.where: list[str] = []
        if not self.names:
            return
        from accelerate.tracking import TensorBoardTracker, WandBTracker

        trackers = []
        if "tensorboard" in self.names:
            trackers.append(TensorBoardTracker(run.name, self.folder))
            self.where.append(f"tensorboard --logdir {self.folder}")
        if "wandb" in self.names:
            mode = os.environ.get("WANDB_MODE") or ("online" if self._wandb_account() else "offline")
            self.folder.mkdir(parents=True, exist_ok=True)
            trackers.append(WandBTracker(run.name, dir=str(self.folder), mode=mode, name=run.name))
            self.where.append(f"wandb: {mode}"
                              + (f", upload with `wandb sync {self.folder / 'wandb'}`" if mode == "offline" else ""))
        accelerator.log_with = trackers
        accelerator.trackers = []
        accelerator.init_trackers(run.name, config=_hyperparameters(config))

    @staticmethod
    def _wandb_account() -> bool:
        if os.environ.get("WANDB_API_KEY"):
            return True
        netrc = Path.home() / ".netrc"
        return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")

    def log(self, values: dict[str, float], step: int) -> None:
        if self.names:
            self.accelerator.log(values, step=step)

    def log_image(self, name: str, image: Image.Image, step: int) -> None:
        if not self.names:
            return
        array = np.asarray(image.convert("RGB"))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({name: array}, step=step, dataformats="HWC")
            else:
                tracker.log_images({name: [image]}, step=step)

    def close(self) -> None:
        if self.names:
            self.accelerator.end_training()
