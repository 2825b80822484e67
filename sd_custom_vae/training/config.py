"""Everything a training run needs to know, read top to bottom.

A run is described by one ``TrainConfig``: a preset (``presets.py``) gives the starting values, a YAML/JSON
file or command-line flags override them, and the result is saved as ``train_config.json`` in the run.
Each setting is declared once, below: its default, its help text, its allowed values and its old spellings
live in the field, ``validate()`` checks them all, and ``sd-custom-vae train`` builds one flag per field
from them (``cli/train.py``). A new option is one field here and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from ..base.deprecation import deprecated
from ..base.errors import UserError
from ..evaluation.metrics import check_crop_side
from ..network.config import ARCHITECTURE_KEYS, validate_config

# diffusers.optimization.SchedulerType's values, the schedules get_scheduler builds
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MODES = ("new", "decoder-finetune", "distill")
# what `sd-custom-vae train` and load_config() start from when no preset or file is named
DEFAULT_PRESET = "tiny"
# accelerate's trackers that run offline and need no account to write (``all``: both)
TRACKERS = ("none", "tensorboard", "wandb", "all")


def setting(default, help: str, *, choices=None, at_least=None, at_most=None, above=None, below=None, flag=True,
            aliases=(), renamed=None, section=None):
    """A TrainConfig field: its default, what it means, the values it may take, whether ``train`` has a flag for it
    (``--name-with-dashes``, plus `aliases`), `renamed` values (old spelling → new, still read, with a warning), and
    the `section` it opens: this setting and those after it, up to the next section, are one group of
    ``train --help`` (``sections()``)."""
    metadata = dict(
        help=help, choices=choices, at_least=at_least, at_most=at_most, above=above, below=below, flag=flag,
        aliases=aliases, renamed=renamed or {}, section=section,
    )
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    preset: str = setting(DEFAULT_PRESET, "the preset the other values started from", flag=False)
    mode: str = setting(  # objectives.py
        "new", "new: a VAE with a latent space of its own; decoder-finetune or distill: keep --teacher's latent space, "
        "so a UNet trained on it understands the latents", choices=MODES, renamed={"scratch": "new"},
        section="what is trained",
    )
    teacher: str | None = setting(None,
                                  "the VAE whose latent space to keep: a folder, a checkpoint file or a Hub repo id")
    teacher_subfolder: str | None = setting(None, "folder of the teacher inside its repo or folder (e.g. vae)")
    decoder_init: str = setting("teacher", "decoder-finetune: start from the teacher's decoder or from random weights",
                                choices=("teacher", "random"), renamed={"scratch": "random"})
    student_width: float = setting(0.25, "distill: student channels as a fraction of the teacher's",
                                   above=0.0, at_most=1.0)
    latent_weight: float = setting(1.0, "distill: weight of matching the teacher's latents", at_least=0.0)
    # decoder-finetune takes the teacher's architecture instead
    model: dict = setting({}, "ScratchVAE keywords (block_out_channels, layers_per_block, ...)", flag=False,
                          section="the network")
    init: str = setting("random", "--mode new or distill: start from random weights, or from weights that compute "
                        "resizing (area down, nearest up: training/initialisation.py)", choices=("random", "resizing"))
    data: str | None = setting(
        None, "image folder, 🤗 dataset (Hub ORG/NAME, save_to_disk folder, parquet/arrow files) or WebDataset "
        "shards (path, glob, {000..099} pattern, URLs); default: the built-in photos", section="data",
    )
    data_split: str = setting("train", "split of a 🤗 dataset to read")
    data_revision: str | None = setting(None, "revision (branch, tag or commit) of a Hub dataset")
    image_column: str | None = setting(None, "dataset column holding the images (default: the one of Image type)")
    streaming: bool = setting(False,
                              "stream a 🤗 dataset rather than download it whole (WebDataset shards always stream)")
    num_workers: int = setting(0, "DataLoader processes that decode and crop images (0: the training process does)",
                               at_least=0)
    resolution: int = setting(64, "training crop side in pixels", at_least=8)
    final_resolution: int | None = setting(
        None, "train the last --final-fraction of the steps on crops this large (fewer per batch, as many pixels); "
        "0: off", at_least=0,
    )
    final_alternate_resolution: int | None = setting(
        None, "in the final phase, every other step trains on crops this large instead of --final-resolution's (as "
        "many pixels per batch): trained at two sizes, a network keeps one brightness across sizes; 0: off",
        at_least=0,
    )
    final_fraction: float = setting(0.2, "share of the steps trained at --final-resolution", above=0.0, below=1.0)
    min_crop_scale: float = setting(
        1.0, "show each training image at a random scale between this and 1: crops up to --resolution/this px wide, "
        "shrunk to --resolution (1 = native scale only)", above=0.0, at_most=1.0,
    )
    hue_rotation: float = setting(
        0.0, "share of training crops shown with their hue turned by a random angle, brightness kept: colours the "
        "training images lack (0 = off)", at_least=0.0, at_most=1.0,
    )
    eval_resolution: int | None = setting(None, "validation crop side in pixels (unset: --resolution's)", at_least=8)
    val_fraction: float = setting(0.1, "share of a user folder held out for validation", above=0.0, below=1.0)
    eval_crops_per_image: int = setting(4, "validation crops per held-out image (centre, then towards the corners)",
                                        at_least=1, at_most=5)
    steps: int = setting(1000, "optimizer steps", at_least=1, section="optimisation")
    batch_size: int = setting(8, "images per process per micro-step", at_least=1)
    gradient_accumulation: int = setting(1, "micro-steps per optimizer step", at_least=1)
    learning_rate: float = setting(3e-4, "peak learning rate", above=0.0, aliases=("--lr",))
    warmup_steps: int = setting(50, "steps of linear learning-rate warm-up", at_least=0)
    lr_schedule: str = setting("cosine", "learning-rate schedule after the warm-up", choices=LR_SCHEDULES)
    weight_decay: float = setting(0.0, "AdamW weight decay", at_least=0.0)
    adam_betas: tuple[float, float] = setting((0.9, 0.99), "AdamW betas: two numbers in [0, 1)", flag=False)
    grad_clip: float = setting(1.0, "clip the gradient norm to this (0 = off)", at_least=0.0)
    ema_decay: float = setting(0.0, "exponential moving average of weights (0 = off)", at_least=0.0, below=1.0)
    mixed_precision: str = setting(
        "no", "no, fp16 (a GPU's, with loss scaling), bf16, or auto: bf16 where the device computes it natively",
        choices=("no", "fp16", "bf16", "auto"),
    )
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward pass: less memory, more time")
    channels_last: bool = setting(False, "keep activations channels-last (NHWC): faster convolutions on most GPUs")
    compile: bool = setting(False, "torch.compile the model (the compile time is reported apart)")
    seed: int = setting(0, "every random draw (crops, noise, initial weights) follows from it", at_least=0)
    reconstruction: str = setting("mse", "reconstruction loss: mse (the course's) or l1 (LDM's)", choices=("mse", "l1"),
                                  section="losses")
    beta: float = setting(1e-6, "KL weight (see --kl-reduction)", at_least=0.0)
    # "ldm": LDM's objective divided by the number of pixel values, so beta=1e-6 is LDM's kl_weight;
    # "sum": the course's  MSE(mean) + beta * KL summed over the batch, where its default beta is 2.5e-4.
    kl_reduction: str = setting("ldm", "ldm: KL per pixel value (beta 1e-6 is LDM's); "
                                "sum: over the batch, as the course",
                                choices=("ldm", "sum"), renamed={"course": "sum"})
    perceptual_weight: float = setting(0.0, "ST-LPIPS weight (0 = off)", at_least=0.0)
    colour_weight: float = setting(
        0.0, "--mode new: weight of asking the latent means to hold each latent pixel's colour linearly, as SD's "
        "do (0 = off)",
        at_least=0.0,
    )
    disc_weight: float = setting(0.0, "PatchGAN weight (0 = off)", at_least=0.0)
    disc_start: int = setting(0, "step at which the discriminator starts (LDM starts it late)", at_least=0)
    disc_learning_rate: float | None = setting(
        None, "the discriminator's peak learning rate, on the same schedule as the VAE's (default: --learning-rate)",
        above=0.0,
    )
    output: str | None = setting(None, "run folder; default runs/<preset>-<timestamp>", section="what the run writes")
    report_to: str = setting(
        "none", "log losses, learning rate, gradient norm, throughput, validation metrics and reconstructions live to "
        "TensorBoard or wandb (offline, in the run's tracking/ folder), or all", choices=TRACKERS,
    )
    sample_every: int = setting(250, "save a reconstruction grid PNG every N steps", at_least=1)
    eval_every: int = setting(250, "validation PSNR/SSIM every N steps", at_least=1)
    checkpoint_every: int = setting(250, "save a checkpoint every N steps", at_least=1)
    keep_checkpoints: int = setting(2, "how many of the newest checkpoints to keep", at_least=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> TrainConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"unknown training option(s): {unknown}")
        return dataclasses.replace(self, **overrides)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the option, its value and what it may be; returns self."""
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value, rules = getattr(self, f.name), f.metadata
            where = f"option {f.name} (--{f.name.replace('_', '-')})" if rules["flag"] else f"option {f.name}"
            _check_type(where, value, hints[f.name])
            if value is None:
                continue
            if rules["choices"] is not None and value not in rules["choices"]:
                raise UserError(f"{where} is {value!r}; choose one of {', '.join(map(str, rules['choices']))}")
            if rules["at_least"] is not None and value < rules["at_least"]:
                raise UserError(f"{where} must be at least {rules['at_least']}, got {value!r}")
            if rules["at_most"] is not None and value > rules["at_most"]:
                raise UserError(f"{where} must be at most {rules['at_most']}, got {value!r}")
            if rules["above"] is not None and not value > rules["above"]:
                raise UserError(f"{where} must be greater than {rules['above']}, got {value!r}")
            if rules["below"] is not None and not value < rules["below"]:
                raise UserError(f"{where} must be less than {rules['below']:g}, got {value!r}")
        betas = self.adam_betas
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                      for b in betas):
            raise UserError(f"option adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.99]; got {list(betas)!r}")
        if self.init != "random" and self.mode == "decoder-finetune":
            raise UserError(f"option init (--init) {self.init} starts a new network: it applies to --mode new and "
                             "distill, not decoder-finetune (which starts from --teacher's weights)")
        if self.final_alternate_resolution and not self.final_resolution:
            raise UserError("option final_alternate_resolution (--final-alternate-resolution) takes turns with "
                             "--final-resolution, which is off: give both, or 0 for this one")
        for name in ("final_resolution", "final_alternate_resolution"):
            side = getattr(self, name)
            if side and side <= self.resolution:
                raise UserError(f"option {name} (--{name.replace('_', '-')}) must be 0 (off) or larger than "
                                 f"--resolution {self.resolution}, got {side}")
        # validation measures SSIM on the evaluation crops, and the perceptual term runs ST-LPIPS on the training ones
        check_crop_side(self.eval_resolution or self.resolution,
                        "--eval-resolution" if self.eval_resolution else "--resolution")
        if self.perceptual_weight > 0:
            check_crop_side(self.resolution, "--resolution", "st_lpips", instead=", or --perceptual-weight 0")
        unknown = sorted(set(self.model) - set(ARCHITECTURE_KEYS))
        if unknown:
            raise UserError(f"option model has unknown key(s) {unknown}; "
                             f"ScratchVAE takes {', '.join(ARCHITECTURE_KEYS)}")
        validate_config(self.model)
        return self


def sections() -> dict[str | None, list[dataclasses.Field]]:
    """TrainConfig's fields by the section each belongs to, in order (None: those before the first section)."""
    grouped, title = {}, None
    for f in dataclasses.fields(TrainConfig):
        title = f.metadata["section"] or title
        grouped.setdefault(title, []).append(f)
    return grouped


def _check_type(where: str, value, annotation) -> None:
    allowed = (typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType)
               else (annotation,))
    if value is None:
        if type(None) not in allowed:
            raise UserError(f"{where} needs a value, got null")
        return
    base = [typing.get_origin(a) or a for a in allowed if a is not type(None)][0]
    if base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is tuple:
        ok = isinstance(value, (tuple, list))
    else:
        ok = isinstance(value, base)
    if not ok:
        raise UserError(f"{where} must be {base.__name__ if base is not float else 'a finite number'}, got {value!r}")


def renamed_values(values: dict) -> dict:
    """`values` (option: value) with old spellings of values replaced by the new, each with a one-line warning."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = dict(values)
    for key, value in values.items():
        renames = fields[key].metadata["renamed"] if key in fields else {}
        if isinstance(value, str) and value in renames:
            deprecated(f"{key} {value!r}", repr(renames[value]), stacklevel=4)  # 4: load_config's caller
            values[key] = renames[value]
    return values
