"""Everything a training run needs to know, read top to bottom, and the presets.

A run is described by one ``TrainConfig``: a preset gives the starting values, a YAML/JSON file
or command-line flags override them, and the result is saved as ``train_config.json`` in the run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml


@dataclass
class TrainConfig:
    preset: str = "tiny"
    # -- what is trained (see objectives.py) --
    mode: str = "scratch"  # "scratch", "decoder-finetune" or "distill"
    teacher: str | None = None  # any VAE checkpoint or folder: required by the teacher modes
    decoder_init: str = "teacher"  # decoder-finetune starts from the teacher's decoder, or "scratch"
    student_width: float = 0.25  # distill with no `model`: the teacher's levels at this fraction of its channels
    latent_weight: float = 1.0  # distill: weight of matching the teacher's latents
    # -- the network (ScratchVAE keywords; taken from the teacher in decoder-finetune) --
    model: dict = field(default_factory=dict)
    # -- data --
    data: str | None = None  # a folder of images; None: the built-in photos
    resolution: int = 64  # training crop side, in pixels
    eval_resolution: int | None = None  # validation crop side (default: resolution)
    val_fraction: float = 0.1  # share of a user folder held out (built-in photos have a fixed split)
    eval_crops_per_image: int = 4
    # -- optimisation --
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process, per micro-step
    gradient_accumulation: int = 1
    learning_rate: float = 3e-4
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # any name diffusers.optimization.get_scheduler knows
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 turns the exponential moving average of weights off
    mixed_precision: str = "no"  # "no", "fp16" or "bf16", where the device supports it
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    seed: int = 0
    # -- losses --
    reconstruction: str = "mse"  # "mse" (the course) or "l1" (the LDM recipe)
    beta: float = 1e-6  # KL weight
    # "ldm": LDM's objective divided by the number of pixel values, so beta=1e-6 is LDM's kl_weight;
    # "course": the course's  MSE(mean) + beta * KL summed over the batch, where its default beta is 2.5e-4.
    kl_reduction: str = "ldm"
    perceptual_weight: float = 0.0  # ST-LPIPS (AlexNet) weight; 0 = off
    disc_weight: float = 0.0  # PatchGAN adversarial weight; 0 = off
    disc_start: int = 0  # step at which the discriminator starts (LDM starts it late)
    # -- what the run writes --
    output: str | None = None  # run folder; None: runs/<preset>-<timestamp>
    sample_every: int = 250  # reconstruction grid PNG
    eval_every: int = 250  # validation PSNR/SSIM
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "TrainConfig":
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown training option(s): {unknown}")
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, TrainConfig] = {
    # Minutes on two CPU cores: the default of `sd-custom-vae train`. ×4 downsampling to 4 channels (LDM's
    # KL-f4 family). Small 32-pixel crops buy four times the steps of 64-pixel ones for the same compute,
    # and the fully convolutional network carries over: it is validated on 64-pixel held-out crops.
    "tiny": TrainConfig(
        preset="tiny",
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
    # A small fast student of any teacher (`--teacher PATH`): a quarter of its width, one block per level.
    "student": TrainConfig(
        preset="student",
        mode="distill",
        model={},
        resolution=32,  # as for tiny: small crops buy steps (3000 in ~5 min on 2 CPUs against the tiny teacher)
        eval_resolution=64,
        steps=3000,
        learning_rate=2e-3,
    ),
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


def load_config(preset_or_file: str | None = None, **overrides) -> TrainConfig:
    """A preset name, or a YAML/JSON file (which may name a ``preset`` to start from), then `overrides`."""
    name = preset_or_file or "tiny"
    if name in PRESETS:
        config, values = PRESETS[name], {}
    else:
        path = Path(name)
        if not path.exists():
            raise ValueError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
        values = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text()) or {}
        base = values.pop("preset", "tiny")
        if base not in PRESETS:
            raise ValueError(f"{path}: unknown preset {base!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[base]
    config = config.replace(model=dict(config.model))  # never mutate the preset itself
    config = config.replace(**values)
    config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    if isinstance(config.model.get("block_out_channels"), list):
        config.model["block_out_channels"] = tuple(config.model["block_out_channels"])
    return config
