"""The training loop: the course's recipe (reconstruction + β·KL) done properly, on accelerate.

The same code runs on a CPU, one GPU, or several processes under ``accelerate launch``. Every
random draw (the crops each process sees, the reparameterisation noise) is a pure function of
the seed and the step, so ``--resume`` continues exactly where a run stopped: the checkpoint only
needs the weights, the optimizer and scheduler states and the step.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

import conversion

from . import run_files, training_state
from .autoencoder_kl import CustomAutoencoderKL
from .calibrate import apply_calibration, calibrate
from .latent_space import CALIBRATION_KEY
from .batches import BatchFeed
from .data import MAX_UPSCALE, DataOptions, load_image_data
from .evaluation import reconstruction_quality
from .images import grid, reconstruction_figure, save_loss_curve, save_png
from .losses import VAELoss
from .objectives import make_objective
from .perceptual import STLPIPS
from .scratch_vae import ScratchVAE
from .train_config import TrainConfig
from .training_state import TrainingDiverged  # noqa: F401 (raised by train(), public here)

FUSED_ADAMW_DEVICES = ("cuda", "cpu")  # where torch has the single-kernel AdamW


@dataclass
class TrainResult:
    output: Path
    steps: int
    metrics: dict
    history: list[dict] = field(default_factory=list)
    main_process: bool = True


def resolve_precision(requested: str) -> str:
    """"auto" → bf16 where the device has it natively (CUDA with bf16, a CPU with AVX-512 or AMX), else "no"."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def make_accelerator(config: TrainConfig) -> Accelerator:
    on_cpu = not torch.cuda.is_available()
    precision = resolve_precision(config.mixed_precision)
    if on_cpu and precision == "fp16":
        raise ValueError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    # Each run sets the process's accelerate state afresh: a second run in one process (a notebook, the tests)
    # may ask for another precision, which accelerate refuses while the first run's state stands. The
    # distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(cpu=on_cpu, mixed_precision=precision, gradient_accumulation_steps=config.gradient_accumulation)


class Trainer:
    """One run: owns the model, optimizer, data and the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        accelerator: Accelerator | None = None,
        progress: bool = True,
        resuming: bool = False,
        overwrite: bool = False,
    ):
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        self.progress = progress
        self.output = self._output_folder(resuming, overwrite)
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
        if config.channels_last:
            self.vae.to(memory_format=torch.channels_last)
        self.data_options = DataOptions(config.data_split, config.data_revision, config.image_column, config.streaming)
        self.data = load_image_data(
            config.data, config.resolution, config.val_fraction, config.eval_crops_per_image,
            config.eval_resolution or config.resolution, self.data_options,
        )
        largest = self.data.largest_side
        if config.final_resolution and largest and config.final_resolution > MAX_UPSCALE * largest:
            # the final phase is a refinement a preset asks for: on images this small it would train on blown-up
            # copies, so the run goes on without it (and train_config.json records that)
            warnings.warn(f"{self.data.description}: images too small for the final {config.final_resolution}px "
                          f"crops (largest shorter side {largest} px); training on {config.resolution}px crops "
                          "throughout", stacklevel=2)
            self.config = config = config.replace(final_resolution=None)

        trainable = [p for p in self.vae.parameters() if p.requires_grad]
        # the fused (single-kernel) AdamW where the device has it, else the foreach one; on a CPU it makes
        # the default preset's step 1.3x faster (100 → 75 ms: the update was a quarter of a small model's step)
        fused = {"fused": True} if self.accelerator.device.type in FUSED_ADAMW_DEVICES else {}
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, betas=config.adam_betas, weight_decay=config.weight_decay, **fused
        )
        # stepped by hand once per optimizer step (accelerate would step it once per process)
        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.ema = EMAModel(trainable, decay=config.ema_decay) if config.ema_decay > 0 else None
        self.model, self.optimizer = self.accelerator.prepare(self.vae, self.optimizer)
        if config.compile:
            # one static graph per crop phase: the final phase changes the crop side and batch size once, and the
            # dynamic-shape graph torch would otherwise build then fails to compile for the CPU (torch 2.13)
            self.model = torch.compile(self.model, dynamic=False)
        self.compile_s = 0.0  # the first step's extra time, when compiling
        self.adversary = self.loss.adversary
        if self.adversary is not None:
            self.adversary.prepare(self.accelerator)
        if self.ema is not None:
            self.ema.to(self.accelerator.device)

    # -- the run folder ---------------------------------------------------------------------------

    def _output_folder(self, resuming: bool, overwrite: bool) -> Path:
        name = [self.config.output or f"runs/{self.config.preset}-{time.strftime('%Y%m%d-%H%M%S')}", None]
        if self.accelerator.is_main_process:
            try:
                training_state.prepare_run_folder(Path(name[0]), resuming, overwrite, self.config.data)
            except (ValueError, OSError) as error:
                name[1] = error
        broadcast_object_list(name)  # every process writes to the folder the main one chose, or stops with it
        if name[1] is not None:
            raise name[1]
        return Path(name[0])

    # -- one step ---------------------------------------------------------------------------------

    def _plain_model(self) -> ScratchVAE:
        """The ScratchVAE itself: without the process wrapper, and uncompiled (a compiled one is an OptimizedModule,
        which evaluation would not recognise, and every validation shape would compile anew)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _next_batch(self) -> torch.Tensor:
        images = self.feed.batch(self.step).to(self.accelerator.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.config.channels_last else images

    def _noise(self, step: int, micro: int) -> torch.Generator:
        a = self.accelerator
        seed = hash((self.config.seed, step, micro, a.process_index)) % 2**63
        return torch.Generator(device=a.device).manual_seed(seed)

    def train_step(self) -> dict[str, float]:
        config, a = self.config, self.accelerator
        unwrapped = self._plain_model()
        adversarial = self.loss.adversarial_active(self.step)
        logged: dict[str, float] = {}
        for micro in range(config.gradient_accumulation):
            images = self._next_batch()
            with a.accumulate(self.model):
                with a.autocast():
                    output = self.objective.terms(
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
                terms.update(self.adversary.update(images, reconstruction, a))
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
            raise TrainingDiverged(
                f"the loss became {total.item()} at step {self.step}; training stopped. "
                + training_state.resume_hint(self.last_checkpoint)
            )

    # -- evaluation and outputs -------------------------------------------------------------------

    def _with_ema(self, fn):
        """Run fn on the unwrapped model with the EMA weights swapped in, when there are any."""
        model = self._plain_model()
        if self.ema is None:
            return fn(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.ema.store(trainable)
        self.ema.copy_to(trainable)
        try:
            return fn(model)
        finally:
            self.ema.restore(trainable)

    def _validate(self, sample: bool = False, final: bool = False) -> dict:
        """Validation metrics (with EMA weights if any), logged; with `sample` the grid of originals and
        reconstructions in samples/, with `final` the run's reconstruction figure."""
        def measure(model):
            metrics, reconstructions = reconstruction_quality(model, self.data.val_crops)
            return {**metrics, **self.objective.metrics(model, self.data.val_crops)}, reconstructions

        metrics, reconstructions = self._with_ema(measure)
        self.val_history.append({"step": self.step, **metrics})
        if final:
            save_png(reconstruction_figure(self.data.val_crops, reconstructions), self.output / run_files.RECONSTRUCTIONS)
        elif sample:
            picture = grid([self.data.val_crops, reconstructions], labels=["original", f"step {self.step}"])
            save_png(picture, self.output / run_files.SAMPLES_DIR / f"step-{self.step:06d}.png")
        return metrics

    def save_state(self) -> Path:
        """A checkpoint of everything ``--resume`` needs, once the weights are known to be sane."""
        a = self.accelerator
        model = self._plain_model()
        training_state.check_sane(model, self.step, self.last_checkpoint)
        a.wait_for_everyone()
        folder = self.output / run_files.CHECKPOINTS_DIR / f"step-{self.step:06d}"
        if a.is_main_process:
            files = {
                run_files.MODEL_WEIGHTS: (model.state_dict(), model.config),
                run_files.OPTIMIZER: self.optimizer.state_dict(),
                run_files.SCHEDULER: self.scheduler.state_dict(),
            }
            if self.ema is not None:
                files[run_files.EMA] = self.ema.state_dict()
            if self.adversary is not None:
                weights, optimizer_state = self.adversary.state(a)
                files[run_files.DISCRIMINATOR] = (weights, None)
                files[run_files.DISCRIMINATOR_OPTIMIZER] = optimizer_state
            files[run_files.STATE] = {
                "step": self.step, "elapsed": self.elapsed, "history": self.history, "val_history": self.val_history
            }
            training_state.save(self.output, self.step, files, self.config.keep_checkpoints)
        a.wait_for_everyone()
        self.last_checkpoint = folder
        return folder

    def load_state(self, files: dict, folder: Path) -> None:
        """Everything needed to continue exactly: weights, optimizer, scheduler, EMA, step and logs."""
        model = self._plain_model()
        try:
            model.load_state_dict(files[run_files.MODEL_WEIGHTS])
        except RuntimeError as error:
            raise ValueError(
                f"{folder} holds another architecture than this run's configuration ({str(error).splitlines()[-1].strip()}); "
                "resume with the run's own settings (leave --config out)"
            ) from None
        self.optimizer.load_state_dict(files[run_files.OPTIMIZER])
        self.scheduler.load_state_dict(files[run_files.SCHEDULER])
        if self.ema is not None:
            self.ema.load_state_dict(files[run_files.EMA])
            self.ema.to(self.accelerator.device)
        if self.adversary is not None:
            self.adversary.load_state(
                self.accelerator, files[run_files.DISCRIMINATOR], files[run_files.DISCRIMINATOR_OPTIMIZER]
            )
        state = files[run_files.STATE]
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
            calibration = calibrate(model, config.data, resolution=resolution, crops=128, options=self.data_options,
                                    progress=self.progress)
            apply_calibration(model, calibration)
        elif record is not None:  # the student reproduces the teacher's latents: its calibration holds
            model.register_to_config(**{CALIBRATION_KEY: record})
        training_state.check_sane(model, self.step, self.last_checkpoint)
        with conversion.atomic_folder(self.output / run_files.MODEL_DIR, overwrite=True) as staging:  # this run's own
            model.save_pretrained(staging)
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
            "mixed_precision": self.accelerator.mixed_precision,
            **({"compile_s": round(self.compile_s, 1)} if config.compile else {}),
        }
        summary.pop("step", None)
        conversion.write_json(summary, self.output / run_files.METRICS)
        save_loss_curve(self.history, self.val_history, self.output / run_files.LOSS_CURVE)

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, resume: list[Path] | None = None) -> TrainResult:
        """Train to ``config.steps``, first loading the newest intact of the `resume` checkpoint candidates."""
        config, a = self.config, self.accelerator
        if resume:
            training_state.load_newest_intact(resume, self.load_state)
        self.feed = BatchFeed(config, self.data, a.process_index, a.num_processes, a.device, self.step)
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
        step_times = []
        while self.step < config.steps:
            step_started = time.perf_counter()
            terms = self.train_step()
            if config.compile and len(step_times) < 2:  # the first step compiles; the second says what a step costs
                step_times.append(time.perf_counter() - step_started)
                self.compile_s = step_times[0] - step_times[-1]
            self.elapsed = time.perf_counter() - started
            self.history.append({"step": self.step, "lr": self.scheduler.get_last_lr()[0], **terms})
            bar.update(1)
            postfix = {"loss": f"{terms['total']:.4f}", "rec": f"{terms['reconstruction']:.4f}"}
            last = self.step == config.steps
            sample = self.step % config.sample_every == 0
            if a.is_main_process and (last or sample or self.step % config.eval_every == 0):
                metrics = self._validate(sample=sample, final=last)
            if metrics:
                postfix["val_psnr"] = f"{metrics['psnr']:.2f}"
            bar.set_postfix(postfix)
            if self.step % config.checkpoint_every == 0 or last:
                self.save_state()
        bar.close()
        if a.is_main_process:
            if not self.val_history or self.val_history[-1]["step"] != self.step:  # resumed a finished run
                metrics = self._validate(final=True)
            self.export(metrics)
        a.wait_for_everyone()
        shared = [metrics]
        broadcast_object_list(shared)  # the main process evaluated; every process returns its numbers
        return TrainResult(self.output, self.step, shared[0], self.history, a.is_main_process)


def train(
    config: TrainConfig, resume: str | Path | bool | None = None, progress: bool = True, overwrite: bool = False
) -> TrainResult:
    """Train `config`. `resume`: a checkpoint folder, a run folder (its newest intact checkpoint), or True for
    config.output's. A new run's output folder must not hold files unless `overwrite` (replaced as a whole)."""
    trainer = Trainer(config, progress=progress, resuming=bool(resume), overwrite=overwrite)
    candidates = None
    if resume:
        candidates = training_state.resume_candidates(trainer.output if resume is True else Path(resume))
    return trainer.run(candidates)
