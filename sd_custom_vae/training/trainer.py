"""The training loop: the course's recipe (reconstruction + β·KL) done properly, on accelerate.

The same code runs on a CPU, one GPU, or several processes under ``accelerate launch``. Every
random draw (the crops each process sees, the reparameterisation noise) is a pure function of
the seed and the step, so ``--resume`` continues exactly where a run stopped: the checkpoint only
needs the weights, the optimizer and scheduler states and the step.

A ``Trainer`` reads and checks everything first (the teacher, the images), then claims its run folder
(``run_folder.py``), loads the checkpoint it resumes, and runs the loop: ``train_step`` is one optimizer step,
``run`` the steps with validation (``validation.py``), checkpoints (``checkpoints.py``) and, at the end,
the exported model (``export.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm

from ..base.errors import UserError
from ..base.files import write_json
from ..conversion import OURS, key_scheme, rename_to_ours
from ..data import DataOptions, absolute, load_image_data
from ..evaluation.perceptual import STLPIPS
from ..models import ScratchVAE
from ..models.run_files import TRAIN_CONFIG
from . import checkpoints, export, tracking
from .batches import BatchFeed, final_phase_for
from .checkpoints import TrainingDiverged
from .config import TrainConfig
from .losses import VAELoss
from .objectives import make_objective
from .optimisation import Optimisation
from .run_folder import RunFolder
from .tracking import Tracker
from .validation import Validation


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
        raise UserError("--mixed-precision fp16 needs a GPU; on a CPU use bf16 or no")
    # Each run sets the process's accelerate state afresh: a second run in one process (a notebook, the tests)
    # may ask for another precision, which accelerate refuses while the first run's state stands. The
    # distributed set-up (PartialState) is kept.
    AcceleratorState._reset_state()
    return Accelerator(cpu=on_cpu, mixed_precision=precision, gradient_accumulation_steps=config.gradient_accumulation)


def _on_main(accelerator: Accelerator, action):
    """`action()` on the main process; every process gets its result, or raises its error."""
    shared = [None, None]
    if accelerator.is_main_process:
        try:
            shared[0] = action()
        except (ValueError, OSError) as error:
            shared[1] = error
    broadcast_object_list(shared)
    if shared[1] is not None:
        raise shared[1]
    return shared[0]


class Trainer:
    """One run: its model, optimisation, data and folder."""

    def __init__(self, config: TrainConfig, resume: str | Path | bool | None = None, overwrite: bool = False,
                 accelerator: Accelerator | None = None, progress: bool = True):
        config.validate()  # what the command line checked already, for a config built in Python
        tracking.check_installed(config.report_to)
        # local paths recorded absolute: a resume from another folder reads the same images and teacher
        config = config.replace(data=absolute(config.data), teacher=absolute(config.teacher))
        self.accelerator = a = accelerator or make_accelerator(config)
        self.progress = progress
        resumed = checkpoints.resumed_run(resume, config.output) if resume else None
        folder = RunFolder(config.output, config.preset, bool(resume), overwrite, resumed)
        _on_main(a, lambda: folder.check(config.data, config.teacher))  # refusals that need nothing read

        # Everything the run needs is read and checked before its folder is touched.
        perceptual = STLPIPS().to(a.device) if config.perceptual_weight > 0 else None
        self.loss = VAELoss(config, perceptual)
        self.objective = make_objective(config, self.loss, a.device)
        config = config.replace(model=self.objective.architecture())  # recorded as trained
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.vae = ScratchVAE(**config.model)
        self.objective.prepare(self.vae)
        if config.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        if config.channels_last:
            self.vae.to(memory_format=torch.channels_last)
        self.data_options = DataOptions(config.data_split, config.data_revision, config.image_column, config.streaming)
        self.data = load_image_data(config.data, config.resolution, config.val_fraction, config.eval_crops_per_image,
                                    config.eval_resolution or config.resolution, self.data_options)
        config = final_phase_for(config, self.data)
        self.config = config
        self.optimisation = Optimisation(config, self.vae, self.loss.adversary, a.device)
        self.model, self.optimisation.optimizer = a.prepare(self.vae, self.optimisation.optimizer)
        if config.compile:
            # one static graph per crop shape (each phase and side): a dynamic-shape one fails to compile for the
            # CPU (torch 2.13)
            self.model = torch.compile(self.model, dynamic=False)
        if self.loss.adversary is not None:
            self.loss.adversary.prepare(a)

        self.step, self.elapsed, self.compile_s = 0, 0.0, 0.0
        self.history: list[dict] = []
        self.val_history: list[dict] = []
        self.last_checkpoint: Path | None = None
        where = folder.path if resume is True else Path(resume) if resume else None
        if folder.forked_from is not None:  # continued into another folder: read it before that one is claimed
            checkpoints.load_newest_intact(checkpoints.resume_candidates(where), self._load_state)

        self.folder = folder
        self.output = _on_main(a, folder.claim)  # now, and only now, the folder is created, locked or replaced
        try:
            if where is not None and folder.forked_from is None:  # under the lock: no other run writes it now
                checkpoints.load_newest_intact(checkpoints.resume_candidates(where), self._load_state)
            self.tracker = Tracker(a, config, self.output)
            self.validation = Validation(self.data.val_crops, self.objective, self.output, self.tracker)
            self.validation.history = self.val_history
        except BaseException:
            folder.release()  # the run never started: the folder is free again
            raise
        self.feed = BatchFeed(config, self.data, a.process_index, a.num_processes, a.device, self.step)

    # -- one step ---------------------------------------------------------------------------------

    def _plain_model(self) -> ScratchVAE:
        """The ScratchVAE itself: without the process wrapper, and uncompiled (a compiled one is an OptimizedModule,
        which evaluation would not recognise, and every validation shape would compile anew)."""
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _noise(self, micro: int) -> torch.Generator:
        a = self.accelerator
        seed = hash((self.config.seed, self.step, micro, a.process_index)) % 2**63
        return torch.Generator(device=a.device).manual_seed(seed)

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``gradient_accumulation`` micro-batches); returns every loss term, averaged."""
        config, a, adversary = self.config, self.accelerator, self.loss.adversary
        last_layer = self._plain_model().decoder.conv_out.weight  # LDM's adaptive GAN weight looks at it
        logged: dict[str, float] = {}
        for micro in range(config.gradient_accumulation):
            images = self.feed.batch(self.step).to(a.device, non_blocking=True)
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with a.accumulate(self.model):
                with a.autocast():
                    output = self.objective.terms(self.model, images, self.step, self._noise(micro), last_layer)
                terms = output.terms
                self._stop_if_not_finite(terms["total"])
                a.backward(terms["total"])
                if a.sync_gradients:
                    terms["grad_norm"] = self.optimisation.clip(a, self.model)
                self.optimisation.optimizer.step()
                self.optimisation.optimizer.zero_grad(set_to_none=True)
            if self.loss.adversarial_active(self.step):
                terms.update(adversary.update(images, output.reconstruction, a))
            for name, value in terms.items():
                logged[name] = (logged.get(name, 0.0)
                                + float(torch.as_tensor(value).detach()) / config.gradient_accumulation)
        self.optimisation.advance()
        self.step += 1
        return logged

    def _stop_if_not_finite(self, total: torch.Tensor) -> None:
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if self.accelerator.reduce(finite, reduction="sum").item() < self.accelerator.num_processes:
            raise TrainingDiverged(
                f"the loss became {total.item()} at step {self.step}; training stopped. "
                + checkpoints.resume_hint(self.last_checkpoint)
            )

    # -- checkpoints ------------------------------------------------------------------------------

    def save_state(self) -> Path:
        """A checkpoint of everything ``--resume`` needs, once the weights are known to be sane."""
        a = self.accelerator
        model = self._plain_model()
        checkpoints.check_sane(model, self.step, self.last_checkpoint)
        a.wait_for_everyone()
        if a.is_main_process:
            files = {
                checkpoints.MODEL_WEIGHTS: (model.state_dict(), model.config),
                **self.optimisation.state(a),
                checkpoints.STATE: {"step": self.step, "elapsed": self.elapsed, "history": self.history,
                                    "val_history": self.validation.history, "data": self.config.data},
            }
            checkpoints.save(self.output, self.step, files, self.config.keep_checkpoints)
        a.wait_for_everyone()
        self.last_checkpoint = checkpoints.folder_for(self.output, self.step)
        return self.last_checkpoint

    def _load_state(self, files: dict, folder: Path) -> None:
        """Everything needed to continue exactly: weights, optimisation, step and logs."""
        weights = files[checkpoints.MODEL_WEIGHTS]
        if key_scheme(weights) != OURS.name:  # a checkpoint from sd-custom-vae 0.2
            weights = rename_to_ours(weights)
        try:
            self._plain_model().load_state_dict(weights)
        except RuntimeError as error:
            raise UserError(
                f"{folder} holds another architecture than this run's configuration "
                f"({str(error).splitlines()[-1].strip()}); "
                "resume with the run's own settings (leave --config out)"
            ) from None
        state = files[checkpoints.STATE]
        if "data" in state and state["data"] != self.config.data:
            raise UserError(
                f"{folder} was trained on {state['data'] or 'the built-in photos'}, but --data now names "
                f"{self.config.data or 'the built-in photos'}: resume with the run's own images (--data "
                f"{state['data'] or 'builtin'}), or start a new run"
            )
        checkpoints.check_steps_left(folder, state["step"], self.config.steps)
        self.optimisation.load_state(files, self.accelerator, folder)
        self.step, self.elapsed = state["step"], state["elapsed"]
        self.history, self.val_history = state["history"], state["val_history"]
        self.last_checkpoint = folder

    # -- the loop ---------------------------------------------------------------------------------

    def _validate(self, sample: bool = False, final: bool = False) -> dict:
        with self.optimisation.averaged():
            return self.validation(self._plain_model(), self.step, sample=sample, final=final)

    def run(self) -> TrainResult:
        """Train to ``config.steps`` (from the step resumed, if any), validate, checkpoint, export."""
        finished = False
        try:
            result, finished = self._run(), True
            return result
        finally:
            self.tracker.close()
            if self.accelerator.is_main_process:
                self.folder.release(stopped=not finished)

    def _run(self) -> TrainResult:
        config, a = self.config, self.accelerator
        if a.is_main_process:
            write_json(config.to_dict(), self.output / TRAIN_CONFIG)
            for where in self.tracker.where:
                tqdm.write(f"tracking: {where}")
        bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step",
                   disable=not (self.progress and a.is_local_main_process))
        if a.is_main_process and not self.validation.history:
            self._validate()  # the starting point, so that every curve shows what training changed
        metrics = self.validation.history[-1] if self.validation.history else {}
        self.model.train()
        started = time.perf_counter() - self.elapsed
        step_times = []
        while self.step < config.steps:
            step_started = time.perf_counter()
            terms = self.train_step()
            seconds = time.perf_counter() - step_started
            if config.compile and len(step_times) < 2:  # the first step compiles; the second says what a step costs
                step_times.append(seconds)
                self.compile_s = step_times[0] - step_times[-1]
            self.elapsed = time.perf_counter() - started
            images = self.feed.batch_size * config.gradient_accumulation * a.num_processes
            self.history.append({"step": self.step, "lr": self.optimisation.learning_rate, **terms})
            self.tracker.log({**{f"train/{k}": v for k, v in terms.items()},
                              "train/lr": self.optimisation.learning_rate,
                              "train/images_per_s": images / seconds}, self.step)
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
            # resumed a finished run
            if not self.validation.history or self.validation.history[-1]["step"] != self.step:
                metrics = self._validate(final=True)
            self._export(metrics)
        a.wait_for_everyone()
        shared = [metrics]
        broadcast_object_list(shared)  # the main process evaluated; every process returns its numbers
        return TrainResult(self.output, self.step, shared[0], self.history, a.is_main_process)

    def _export(self, metrics: dict) -> None:
        config = self.config
        with self.optimisation.averaged():
            model = export.as_pipeline_model(self._plain_model(), self.objective, config, self.data_options,
                                             self.progress)
        checkpoints.check_sane(model, self.step, self.last_checkpoint)
        summary = {
            **{k: v for k, v in metrics.items() if k != "step"},
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
            "ema": self.optimisation.ema is not None,
            "processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            **({"compile_s": round(self.compile_s, 1)} if config.compile else {}),
        }
        export.write_results(self.output, model, summary, self.history, self.validation.history)


def train(
    config: TrainConfig, resume: str | Path | bool | None = None, progress: bool = True, overwrite: bool = False
) -> TrainResult:
    """Train `config`. `resume`: a checkpoint folder, a run folder (its newest intact checkpoint), or True for
    config.output's. A new run's output folder must not hold files unless `overwrite` (replaced as a whole)."""
    return Trainer(config, resume=resume, overwrite=overwrite, progress=progress).run()
