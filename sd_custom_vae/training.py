"""The training loop: the course's recipe (reconstruction + β·KL) done properly, on accelerate.

The same code runs on a CPU, one GPU, or several processes under ``accelerate launch``. Every
random draw (the crops each process sees, the reparameterisation noise) is a pure function of
the seed and the step, so ``--resume`` continues exactly where a run stopped: the checkpoint only
needs the weights, the optimizer and scheduler states and the step.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

import conversion

from . import run_files
from .autoencoder_kl import CustomAutoencoderKL
from .calibrate import CALIBRATION_KEY, apply_calibration, calibrate
from .data import RandomCrops, load_image_data
from .evaluation import reconstruction_quality
from .images import grid, save_loss_curve, save_png
from .losses import VAELoss
from .objectives import make_objective
from .perceptual import STLPIPS
from .scratch_vae import ScratchVAE
from .train_config import TrainConfig

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; the run stopped and its last good checkpoint is kept."""


@dataclass
class TrainResult:
    output: Path
    steps: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    main_process: bool = True


def make_accelerator(config: TrainConfig) -> Accelerator:
    on_cpu = not torch.cuda.is_available()
    if on_cpu and config.mixed_precision == "fp16":
        raise ValueError("mixed_precision='fp16' needs a GPU; on a CPU use 'bf16' or 'no'")
    return Accelerator(
        cpu=on_cpu, mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation
    )


def _latest_checkpoint(run: Path) -> Path | None:
    checkpoints = sorted((run / run_files.CHECKPOINTS_DIR).glob("step-*"))
    return checkpoints[-1] if checkpoints else None


class Trainer:
    """One run: owns the model, optimizer, data and the run folder."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None, progress: bool = True):
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        self.progress = progress
        self.output = self._output_folder()
        self.step = 0
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        self.elapsed = 0.0
        self.last_checkpoint: Path | None = None

        perceptual = STLPIPS().to(self.accelerator.device) if config.perceptual_weight > 0 else None
        self.loss = VAELoss(config, perceptual)
        self.objective = make_objective(config, self.loss, self.accelerator.device)
        self.config = config = config.replace(model=self.objective.architecture())  # recorded as trained
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.vae = ScratchVAE(**config.model)
        self.objective.prepare(self.vae)
        if config.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.data = load_image_data(
            config.data, config.resolution, config.val_fraction, config.eval_crops_per_image, config.eval_resolution
        )
        self.crops = RandomCrops(self.data.train, config.resolution, seed=config.seed)

        trainable = [p for p in self.vae.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        # stepped by hand once per optimizer step (accelerate would step it once per process)
        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay > 0 else None
        self.disc_optimizer = None
        if self.loss.discriminator is not None:
            self.disc_optimizer = torch.optim.AdamW(
                self.loss.discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.9)
            )
        prepared = self.accelerator.prepare(self.vae, self.optimizer)
        self.model, self.optimizer = prepared
        if self.loss.discriminator is not None:
            self.discriminator, self.disc_optimizer = self.accelerator.prepare(self.loss.discriminator, self.disc_optimizer)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)

    # -- the run folder ---------------------------------------------------------------------------

    def _output_folder(self) -> Path:
        name = [self.config.output or f"runs/{self.config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"]
        broadcast_object_list(name)  # every process writes to the folder the main one chose
        folder = Path(name[0])
        if self.accelerator.is_main_process:
            conversion.check_writable(folder / run_files.TRAIN_CONFIG)
            folder.mkdir(parents=True, exist_ok=True)
        return folder

    # -- one step ---------------------------------------------------------------------------------

    def _batch(self, step: int, micro: int) -> torch.Tensor:
        """The crops for (step, micro-step) on this process: disjoint across processes and steps."""
        a = self.accelerator
        first = ((step * self.config.gradient_accumulation + micro) * a.num_processes + a.process_index)
        first *= self.config.batch_size
        return torch.stack([self.crops[first + j] for j in range(self.config.batch_size)]).to(a.device)

    def _noise(self, step: int, micro: int) -> torch.Generator:
        a = self.accelerator
        seed = hash((self.config.seed, step, micro, a.process_index)) % 2**63
        return torch.Generator(device=a.device).manual_seed(seed)

    def train_step(self) -> dict[str, float]:
        config, a = self.config, self.accelerator
        unwrapped = a.unwrap_model(self.model)
        adversarial = self.loss.adversarial_active(self.step)
        logged: dict[str, float] = {}
        for micro in range(config.gradient_accumulation):
            images = self._batch(self.step, micro)
            with a.accumulate(self.model):
                if adversarial:
                    self.loss.discriminator.requires_grad_(False)
                with a.autocast():
                    output = self.objective.step(
                        self.model, images, self.step, self._noise(self.step, micro), unwrapped.decoder.conv_out.weight
                    )
                terms, reconstruction = output.terms, output.reconstruction
                self._stop_if_not_finite(terms["total"])
                a.backward(terms["total"])
                if a.sync_gradients and config.grad_clip > 0:
                    a.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], config.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if adversarial:
                self.loss.discriminator.requires_grad_(True)
                with a.accumulate(self.discriminator), a.autocast():
                    disc_terms = self.loss.discriminator_terms(images, reconstruction)
                    a.backward(disc_terms["discriminator"])
                    self.disc_optimizer.step()
                    self.disc_optimizer.zero_grad(set_to_none=True)
                terms.update(disc_terms)
            for name, value in terms.items():
                logged[name] = logged.get(name, 0.0) + float(torch.as_tensor(value).detach()) / config.gradient_accumulation
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step([p for p in unwrapped.parameters() if p.requires_grad])
        self.step += 1
        return logged

    def _stop_if_not_finite(self, total: torch.Tensor) -> None:
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if self.accelerator.reduce(finite, reduction="sum").item() < self.accelerator.num_processes:
            where = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was saved yet"
            raise TrainingDiverged(
                f"the loss became {total.item()} at step {self.step}; training stopped ({where}). "
                "Try a lower learning rate or a smaller beta."
            )

    # -- evaluation and outputs -------------------------------------------------------------------

    def _with_ema(self, fn):
        """Run fn on the unwrapped model with the EMA weights swapped in, when there are any."""
        model = self.accelerator.unwrap_model(self.model)
        if self.ema is None:
            return fn(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.ema.store(trainable)
        self.ema.copy_to(trainable)
        try:
            return fn(model)
        finally:
            self.ema.restore(trainable)

    def _validate(self, grid_path: Path | None = None, label: str = "") -> dict:
        """Validation metrics (with EMA weights if any), logged; a grid of originals vs reconstructions if asked."""
        def measure(model):
            metrics, reconstructions = reconstruction_quality(model, self.data.val_crops)
            return {**metrics, **self.objective.metrics(model, self.data.val_crops)}, reconstructions

        metrics, reconstructions = self._with_ema(measure)
        self.val_history.append({"step": self.step, **metrics})
        if grid_path is not None:
            save_png(grid([self.data.val_crops, reconstructions], labels=["original", label]), grid_path)
        return metrics

    def save_checkpoint(self) -> Path:
        a = self.accelerator
        a.wait_for_everyone()
        folder = self.output / run_files.CHECKPOINTS_DIR / f"step-{self.step:06d}"
        if a.is_main_process:
            tmp = folder.with_name(f".tmp-{folder.name}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model = a.unwrap_model(self.model)
            conversion.write_safetensors(model.state_dict(), tmp / "model.safetensors", config=model.config)
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), tmp / "ema.pt")
            if self.disc_optimizer is not None:
                conversion.write_safetensors(a.unwrap_model(self.discriminator).state_dict(), tmp / "discriminator.safetensors")
                torch.save(self.disc_optimizer.state_dict(), tmp / "disc_optimizer.pt")
            state = {"step": self.step, "elapsed": self.elapsed, "history": self.history, "val_history": self.val_history}
            conversion.write_json(state, tmp / "state.json")
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)  # a checkpoint folder exists only once it is complete
            kept = sorted(folder.parent.glob("step-*"))
            for old in kept[: -self.config.keep_checkpoints]:
                shutil.rmtree(old)
        a.wait_for_everyone()
        self.last_checkpoint = folder
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        """Everything needed to continue exactly: weights, optimizer, scheduler, EMA, step and logs."""
        from safetensors.torch import load_file

        def load(name: str):
            return torch.load(folder / name, map_location="cpu", weights_only=True)

        self.accelerator.unwrap_model(self.model).load_state_dict(load_file(folder / "model.safetensors"))
        self.optimizer.load_state_dict(load("optimizer.pt"))
        self.scheduler.load_state_dict(load("scheduler.pt"))
        if self.ema is not None:
            self.ema.load_state_dict(load("ema.pt"))
            self.ema.to(self.accelerator.device)
        if self.disc_optimizer is not None:
            self.accelerator.unwrap_model(self.discriminator).load_state_dict(load_file(folder / "discriminator.safetensors"))
            self.disc_optimizer.load_state_dict(load("disc_optimizer.pt"))
        state = json.loads((folder / "state.json").read_text())
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.history, self.val_history = state["history"], state["val_history"]
        self.last_checkpoint = folder

    def export(self, metrics: dict) -> None:
        """The run's results: the model folder for `vae=`, metrics.json, the final grid and the loss curve."""
        config = self.config
        latent_space = self.objective.latent_space()
        record = latent_space.pop(CALIBRATION_KEY, None)
        model = self._with_ema(lambda m: CustomAutoencoderKL.from_scratch_vae(m, **latent_space)).eval()
        if self.objective.mode == "scratch":
            # a new latent space: measure its scale as SD's 0.18215 was measured, so a pipeline can use it
            resolution = config.eval_resolution or config.resolution
            apply_calibration(model, calibrate(model, config.data, resolution=resolution, crops=128))
        elif record is not None:  # the student reproduces the teacher's latents: its calibration holds
            model.register_to_config(**{CALIBRATION_KEY: record})
        target = self.output / run_files.MODEL_DIR
        staging = self.output / f".tmp-{run_files.MODEL_DIR}"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        summary = {
            **metrics,
            "steps": self.step,
            "data": self.data.description,
            "resolution": config.resolution,
            "preset": config.preset,
            "mode": config.mode,
            "teacher": config.teacher,
            "wall_time_s": round(self.elapsed, 1),
            "parameters": sum(p.numel() for p in model.parameters()),
            "scaling_factor": model.config.scaling_factor,
            "val_crops": len(self.data.val_crops),
            "ema": self.ema is not None,
            "processes": self.accelerator.num_processes,
        }
        summary.pop("step", None)
        conversion.write_json(summary, self.output / run_files.METRICS)
        save_loss_curve(self.history, self.val_history, self.output / run_files.LOSS_CURVE)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, resume: Path | None = None) -> TrainResult:
        config, a = self.config, self.accelerator
        if resume is not None:
            self.load_checkpoint(resume)
        if a.is_main_process:
            conversion.write_json(config.to_dict(), self.output / run_files.TRAIN_CONFIG)
        bar = tqdm(
            total=config.steps, initial=self.step, desc="train", unit="step",
            disable=not (self.progress and a.is_local_main_process),
        )
        if a.is_main_process and not self.val_history:
            self._validate()  # the starting point, so that every curve shows what training changed
        metrics = self.val_history[-1] if self.val_history else {}
        self.model.train()
        started = time.perf_counter() - self.elapsed
        while self.step < config.steps:
            terms = self.train_step()
            self.elapsed = time.perf_counter() - started
            self.history.append({"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms})
            bar.update(1)
            postfix = {"loss": f"{terms['total']:.4f}", "rec": f"{terms['reconstruction']:.4f}"}
            last = self.step == config.steps
            sample = self.step % config.sample_every == 0
            if a.is_main_process and (last or sample or self.step % config.eval_every == 0):
                if last:
                    metrics = self._validate(self.output / run_files.RECONSTRUCTIONS, "reconstruction")
                elif sample:
                    metrics = self._validate(self.output / run_files.SAMPLES_DIR / f"step-{self.step:06d}.png", f"step {self.step}")
                else:
                    metrics = self._validate()
            if metrics:
                postfix["val_psnr"] = f"{metrics['psnr']:.2f}"
            bar.set_postfix(postfix)
            if self.step % config.checkpoint_every == 0 or last:
                self.save_checkpoint()
        bar.close()
        if a.is_main_process:
            if not self.val_history or self.val_history[-1]["step"] != self.step:  # resumed a finished run
                metrics = self._validate(self.output / run_files.RECONSTRUCTIONS, "reconstruction")
            self.export(metrics)
        a.wait_for_everyone()
        shared = [metrics]
        broadcast_object_list(shared)  # the main process evaluated; every process returns its numbers
        return TrainResult(self.output, self.step, shared[0], self.history, a.is_main_process)


def train(config: TrainConfig, resume: str | Path | bool | None = None, progress: bool = True) -> TrainResult:
    """Train `config`; `resume` is a checkpoint folder, a run folder, or True for the latest checkpoint of config.output."""
    trainer = Trainer(config, progress=progress)
    checkpoint = None
    if resume:
        where = trainer.output if resume is True else Path(resume)
        checkpoint = where if (where / "state.json").exists() else _latest_checkpoint(where)
        if checkpoint is None:
            raise FileNotFoundError(f"nothing to resume: no checkpoint under {where / run_files.CHECKPOINTS_DIR}")
    return trainer.run(checkpoint)
