"""What a finished run leaves: the model folder for ``vae=`` (with its latent scale), metrics.json and the loss
curve. The model is written last, whole, under the run's own ``model/``."""

from __future__ import annotations

from pathlib import Path

from ..base.files import atomic_folder, write_json
from ..data import DataOptions
from ..evaluation.calibrate import apply_calibration, calibrate
from ..models import CustomAutoencoderKL, ScratchVAE
from ..models.latent_space import CALIBRATION_KEY
from ..models.run_files import LOSS_CURVE, METRICS_FILE, MODEL_DIR
from .config import TrainConfig
from .curves import save_loss_curve
from .objectives import Objective

CALIBRATION_CROPS = 128


def as_pipeline_model(vae: ScratchVAE, objective: Objective, config: TrainConfig, options: DataOptions,
                      progress: bool) -> CustomAutoencoderKL:
    """The trained network as a ``CustomAutoencoderKL`` whose config says how to scale its latents: measured, for a
    new latent space, as SD's 0.18215 was; the teacher's, for a VAE that speaks the teacher's."""
    latent_space = objective.latent_space()
    record = latent_space.pop(CALIBRATION_KEY, None)
    model = CustomAutoencoderKL.from_scratch_vae(vae, **latent_space).eval()
    if objective.mode == "new":
        resolution = config.eval_resolution or config.resolution
        apply_calibration(model, calibrate(model, config.data, resolution=resolution, crops=CALIBRATION_CROPS,
                                           options=options, progress=progress))
    elif record is not None:  # the student reproduces the teacher's latents: its calibration holds
        model.register_to_config(**{CALIBRATION_KEY: record})
    return model


def write_results(run: Path, model: CustomAutoencoderKL, summary: dict, history: list[dict],
                  val_history: list[dict]) -> None:
    with atomic_folder(run / MODEL_DIR, overwrite=True) as staging:  # this run's own
        model.save_pretrained(staging)
    write_json(summary, run / METRICS_FILE)
    save_loss_curve(history, val_history, run / LOSS_CURVE)
