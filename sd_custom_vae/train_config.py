"""Everything a training run needs to know, read top to bottom, and the presets.

A run is described by one ``TrainConfig``: a preset gives the starting values, a YAML/JSON file
or command-line flags override them, and the result is saved as ``train_config.json`` in the run.
Each setting is declared once, below: its default, its help text and its allowed values live in
the field, ``validate()`` checks them all, and ``sd-custom-vae train`` builds one flag per field
from them (``cli/train.py``). A new option is one field here and the code that uses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import conversion

# diffusers.optimization.SchedulerType's values, the schedules get_scheduler builds
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MODES = ("scratch", "decoder-finetune", "distill")
# Renamed option values: old → new. The old spelling still works, with a warning.
RENAMED_VALUES = {"kl_reduction": {"course": "sum"}}


def setting(default, help: str, *, choices=None, at_least=None, at_most=None, above=None, below=None, flag=True, aliases=()):
    """A TrainConfig field: its default, what it means, the values it may take, and whether ``train`` has a
    flag for it (``--name-with-dashes``, plus `aliases`)."""
    metadata = dict(
        help=help, choices=choices, at_least=at_least, at_most=at_most, above=above, below=below, flag=flag, aliases=aliases
    )
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    preset: str = setting("tiny", "the preset the other values started from", flag=False)
    # -- what is trained (see objectives.py) --
    mode: str = setting("scratch", "scratch, or train against --teacher so a pretrained UNet understands the latents", choices=MODES)
    teacher: str | None = setting(None, "the VAE whose latent space to keep: a folder, a checkpoint file or a Hub repo id")
    teacher_subfolder: str | None = setting(None, "folder of the teacher inside its repo or folder (e.g. vae)")
    decoder_init: str = setting("teacher", "decoder-finetune: start from the teacher's decoder or from scratch", choices=("teacher", "scratch"))
    student_width: float = setting(0.25, "distill: student channels as a fraction of the teacher's", above=0.0, at_most=1.0)
    latent_weight: float = setting(1.0, "distill: weight of matching the teacher's latents", at_least=0.0)
    # -- the network: ScratchVAE keywords (taken from the teacher in decoder-finetune) --
    model: dict = setting({}, "ScratchVAE keywords (block_out_channels, layers_per_block, ...)", flag=False)
    # -- data --
    data: str | None = setting(
        None, "image folder, 🤗 dataset (Hub ORG/NAME, save_to_disk folder, parquet/arrow files) or WebDataset "
        "shards (path, glob, {000..099} pattern, URLs); default: the built-in photos"
    )
    data_split: str = setting("train", "split of a 🤗 dataset to read")
    data_revision: str | None = setting(None, "revision (branch, tag or commit) of a Hub dataset")
    image_column: str | None = setting(None, "dataset column holding the images (default: the one of Image type)")
    streaming: bool = setting(False, "stream a 🤗 dataset rather than download it whole (WebDataset shards always stream)")
    num_workers: int = setting(0, "DataLoader processes that decode and crop images (0: the training process does)", at_least=0)
    resolution: int = setting(64, "training crop side in pixels", at_least=8)
    final_resolution: int | None = setting(
        None, "train the last --final-fraction of the steps on crops this large (fewer per batch, as many pixels); "
        "0: off", at_least=0,
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
    eval_resolution: int | None = setting(None, "validation crop side in pixels (default: --resolution)", at_least=8)
    val_fraction: float = setting(0.1, "share of a user folder held out for validation", above=0.0, below=1.0)
    eval_crops_per_image: int = setting(4, "validation crops per held-out image (centre, then towards the corners)", at_least=1, at_most=5)
    # -- optimisation --
    steps: int = setting(1000, "optimizer steps", at_least=1)
    batch_size: int = setting(8, "images per process per micro-step", at_least=1)
    gradient_accumulation: int = setting(1, "micro-steps per optimizer step", at_least=1)
    learning_rate: float = setting(3e-4, "peak learning rate", above=0.0, aliases=("--lr",))
    warmup_steps: int = setting(50, "steps of linear learning-rate warm-up", at_least=0)
    lr_schedule: str = setting("cosine", "learning-rate schedule after the warm-up", choices=LR_SCHEDULES)
    weight_decay: float = setting(0.0, "AdamW weight decay", at_least=0.0)
    adam_betas: tuple[float, float] = setting((0.9, 0.99), "AdamW betas", flag=False)
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
    # -- losses --
    reconstruction: str = setting("mse", "reconstruction loss: mse (the course) or l1 (the LDM recipe)", choices=("mse", "l1"))
    beta: float = setting(1e-6, "KL weight (see --kl-reduction)", at_least=0.0)
    # "ldm": LDM's objective divided by the number of pixel values, so beta=1e-6 is LDM's kl_weight;
    # "sum": the course's  MSE(mean) + beta * KL summed over the batch, where its default beta is 2.5e-4.
    kl_reduction: str = setting("ldm", "ldm: KL per pixel value (beta 1e-6 is LDM's); sum: over the batch, as the course", choices=("ldm", "sum"))
    perceptual_weight: float = setting(0.0, "ST-LPIPS weight (0 = off)", at_least=0.0)
    colour_weight: float = setting(
        0.0, "scratch mode: weight of asking the latent means to hold each latent pixel's colour linearly, as SD's "
        "do (0 = off)",
        at_least=0.0,
    )
    disc_weight: float = setting(0.0, "PatchGAN weight (0 = off)", at_least=0.0)
    disc_start: int = setting(0, "step at which the discriminator starts (LDM starts it late)", at_least=0)
    # -- what the run writes --
    output: str | None = setting(None, "run folder; default runs/<preset>-<timestamp>")
    sample_every: int = setting(250, "save a reconstruction grid PNG every N steps", at_least=1)
    eval_every: int = setting(250, "validation PSNR/SSIM every N steps", at_least=1)
    checkpoint_every: int = setting(250, "save a checkpoint every N steps", at_least=1)
    keep_checkpoints: int = setting(2, "how many of the newest checkpoints to keep", at_least=1)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "TrainConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown training option(s): {unknown}")
        return dataclasses.replace(self, **overrides)

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the option, its value and what it may be; returns self."""
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(self):
            value, rules = getattr(self, f.name), f.metadata
            where = f"option {f.name} (--{f.name.replace('_', '-')})" if rules["flag"] else f"option {f.name}"
            _check_type(where, value, hints[f.name])
            if value is None:
                continue
            if rules["choices"] is not None and value not in rules["choices"]:
                raise ValueError(f"{where} is {value!r}; choose one of {', '.join(map(str, rules['choices']))}")
            if rules["at_least"] is not None and value < rules["at_least"]:
                raise ValueError(f"{where} must be at least {rules['at_least']}, got {value!r}")
            if rules["at_most"] is not None and value > rules["at_most"]:
                raise ValueError(f"{where} must be at most {rules['at_most']}, got {value!r}")
            if rules["above"] is not None and not value > rules["above"]:
                raise ValueError(f"{where} must be greater than {rules['above']}, got {value!r}")
            if rules["below"] is not None and not value < rules["below"]:
                raise ValueError(f"{where} must be less than {rules['below']:g}, got {value!r}")
        if self.final_resolution and self.final_resolution <= self.resolution:
            raise ValueError(f"option final_resolution (--final-resolution) must be 0 (off) or larger than --resolution "
                             f"{self.resolution}, got {self.final_resolution}")
        unknown = sorted(set(self.model) - set(conversion.ARCHITECTURE_KEYS))
        if unknown:
            raise ValueError(f"option model has unknown key(s) {unknown}; ScratchVAE takes {', '.join(conversion.ARCHITECTURE_KEYS)}")
        conversion.validate_config(self.model)
        return self


def _check_type(where: str, value, annotation) -> None:
    allowed = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    if value is None:
        if type(None) not in allowed:
            raise ValueError(f"{where} needs a value, got null")
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
        raise ValueError(f"{where} must be {base.__name__ if base is not float else 'a finite number'}, got {value!r}")


# The default of `sd-custom-vae train`: Stable Diffusion's latent geometry (×8 downsampling over four
# levels, 4 latent channels: a 512² image gives 64×64×4 latents) at an eighth of SD's width, in under a
# quarter of an hour on two CPU cores (about 13 minutes). What each choice bought (PSNR on 256-px held-out
# crops, README): the first half on 32-px crops (four times the steps of 64-px ones for the same compute;
# the network is fully convolutional; it plateaus there after ~1000 steps, yet a shorter first phase
# lost 3 dB), the second half on 128-px crops, where the deepest level sees whole objects (22.8 dB for
# two seeds; a last fifth gave 22.8 and 21.0 in more time); the colour term at 0.1: without it, whether the
# latents came to carry colour was close to chance (19-23 dB); with it both seeds kept colour, 23.4 and 23.5 dB
# (weight 1: 23.1; with MSE: 23.5); crops of the photos shrunk by a random factor down to 0.5 (more of a photo
# in each crop: 23.96 dB, detail better, colour not) and half of them hue-turned, so that colours the 24
# training photos lack, a held-out photo's dark teal, are not painted grey (24.00 alone; both: 24.04 and 23.95
# for two seeds; EMA 0.999 instead 23.3); no mid-block attention (it only pays at 256 px and beyond); L1,
# bf16 where the CPU computes it natively; learning rate 5e-4: at 2e-3 the loss stalled from step 1500 and the
# reconstructions lost their colour (19.7-20.9 dB, saturation a third of the photos').
TINY = TrainConfig(
    preset="tiny",
    model=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=16,
               mid_block_add_attention=False),
    resolution=32,
    final_resolution=128,
    final_fraction=0.5,
    eval_resolution=256,
    steps=4000,
    batch_size=8,
    learning_rate=5e-4,
    reconstruction="l1",
    colour_weight=0.1,
    min_crop_scale=0.5,
    hue_rotation=0.5,
    mixed_precision="auto",
    sample_every=1000,
    eval_every=1000,
    checkpoint_every=1000,
)

PRESETS: dict[str, TrainConfig] = {
    "tiny": TINY,
    # LDM's KL-f4 geometry (×4 over three levels, 4 channels): 4× the latents of SD's, easier to reconstruct
    # (26.8 dB on 64-px held-out crops in 11 minutes), the previous default.
    "tiny-f4": TrainConfig(
        preset="tiny-f4",
        model=dict(block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=4, norm_num_groups=16),
        resolution=32,
        eval_resolution=64,
        steps=2800,
        batch_size=8,
        learning_rate=2e-3,
        sample_every=400,
        eval_every=200,
        checkpoint_every=400,
    ),
    # Hours on a CPU, minutes on a GPU: SD's ×8 downsampling at a fraction of the width.
    "small": TrainConfig(
        preset="small",
        model=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4, norm_num_groups=32),
        resolution=128,
        steps=20_000,
        batch_size=8,
        learning_rate=2e-4,
        ema_decay=0.999,
        sample_every=1000,
        eval_every=1000,
        checkpoint_every=1000,
    ),
    # A small fast student of any teacher (`--teacher PATH`): a quarter of its width, one block per level,
    # trained as tiny (its rescaled and hue-turned crops too: what a student lacks is generalisation) but with
    # 70 % of the steps on 32-px crops (eight per batch: more photos seen) and the last 30 % on 128-px ones.
    # Latent error on 256-px held-out crops (README): 128-px share 0.1 / 0.3 / 0.5 / 0.8 → 6.5 / 5.3 / 5.9 /
    # 7.2 % without the augmentations, 0.3 with them 4.2 %.
    "student": TINY.replace(preset="student", mode="distill", model={}, steps=4500, final_fraction=0.3),
    # The full SD 1.x architecture, LDM's recipe: for GPUs.
    "sd": TrainConfig(
        preset="sd",
        model=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32),
        resolution=256,
        steps=200_000,
        batch_size=4,
        learning_rate=4.5e-6 * 4,
        warmup_steps=1000,
        lr_schedule="constant_with_warmup",
        reconstruction="l1",
        perceptual_weight=1.0,
        disc_weight=0.5,
        disc_start=50_001,
        ema_decay=0.9999,
        mixed_precision="bf16",
        sample_every=2000,
        eval_every=2000,
        checkpoint_every=5000,
    ),
}


def read_config_file(path: Path) -> dict:
    """A YAML or JSON file of TrainConfig fields; a syntax error names the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{path}: {where}{getattr(error, 'problem', None) or error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of option: value, got a {type(values).__name__}")
    return values


def _renamed(values: dict) -> dict:
    values = dict(values)
    for key, renames in RENAMED_VALUES.items():
        if values.get(key) in renames:
            new = renames[values[key]]
            warnings.warn(f"{key}={values[key]!r} is now called {new!r}", FutureWarning, stacklevel=3)
            values[key] = new
    return values


def load_config(preset_or_file: str | None = None, **overrides) -> TrainConfig:
    """A preset name, or a YAML/JSON file (which may name a ``preset`` to start from), then `overrides`;
    validated."""
    name = preset_or_file or "tiny"
    if name in PRESETS:
        config, values = PRESETS[name], {}
    else:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
        values = read_config_file(path)
        base = values.pop("preset", "tiny")
        if base not in PRESETS:
            raise ValueError(f"{path}: unknown preset {base!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[base]
    config = config.replace(model=dict(config.model))  # never mutate the preset itself
    config = config.replace(**_renamed(values))
    config = config.replace(**_renamed({k: v for k, v in overrides.items() if v is not None}))
    if not isinstance(config.model, dict):
        raise ValueError(f"option model must be a mapping of ScratchVAE keywords, got {config.model!r}")
    if isinstance(config.model.get("block_out_channels"), list):
        config.model["block_out_channels"] = tuple(config.model["block_out_channels"])
    if isinstance(config.adam_betas, list):
        config.adam_betas = tuple(config.adam_betas)
    return config.validate()
