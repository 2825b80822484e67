"""The presets: starting points for ``TrainConfig`` (``--config NAME``), and reading a run's configuration from a
preset, a YAML/JSON file and flags (``load_config``)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..base.errors import UserError
from .config import DEFAULT_PRESET, TrainConfig, renamed_values


def every(steps: int) -> dict:
    """Validate, save a sample grid and checkpoint every `steps` steps."""
    return dict(sample_every=steps, eval_every=steps, checkpoint_every=steps)


# The default of `sd-custom-vae train`: Stable Diffusion's latent geometry (×8 downsampling over four levels,
# 4 latent channels: a 512² image gives 64×64×4 latents) at an eighth of SD's width, in about ten minutes on two
# CPU cores. It starts as resizing (area down, nearest up: --init resizing, which needs GroupNorm groups of four
# channels, hence 8 groups) and learns what resizing lacks: first on 32-px crops, then on 64-px and 128-px ones in
# turn, with MSE. GroupNorm's statistics span the whole image, so a network trained at one size drifts in
# brightness at others, and L1 pulls a dark crop darker (towards its median): two sizes and MSE hold both.
# What each choice bought is docs/training.md's experiment log.
TINY = TrainConfig(
    preset="tiny",
    model=dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=8,
               mid_block_add_attention=False),
    init="resizing",
    resolution=32,
    final_resolution=64,
    final_alternate_resolution=128,
    final_fraction=0.5,
    eval_resolution=256,
    steps=4000,
    batch_size=8,
    learning_rate=5e-4,
    reconstruction="mse",
    colour_weight=0.1,
    min_crop_scale=0.5,
    hue_rotation=0.5,
    mixed_precision="auto",
    **every(1000),
)

PRESETS: dict[str, TrainConfig] = {preset.preset: preset for preset in (
    TINY,
    # LDM's KL-f4 geometry (×4 over three levels, 4 channels): 4× the latents of SD's, easier to reconstruct
    # (26.8 dB on 64-px held-out crops in 11 minutes), the previous default.
    TrainConfig(
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
    TrainConfig(
        preset="small",
        model=dict(block_out_channels=(64, 128, 256, 256), layers_per_block=2, latent_channels=4, norm_num_groups=32),
        resolution=128,
        steps=20_000,
        batch_size=8,
        learning_rate=2e-4,
        ema_decay=0.999,
        **every(1000),
    ),
    # A small fast student of any teacher (`--teacher PATH`): a quarter of its width, one block per level,
    # trained as tiny (its rescaled and hue-turned crops too: what a student lacks is generalisation, and its start
    # as resizing: tiny's latents are block colours plus detail, and a student that starts from block colours
    # matches them to 1.7 % where one from random weights reached 6.3 %), with 70 % of the steps on 32-px crops and
    # the last 30 % on 128-px ones, with L1 (docs/training.md: what each bought).
    TINY.replace(preset="student", mode="distill", model={}, steps=4500, final_resolution=128,
                 final_alternate_resolution=None, final_fraction=0.3, reconstruction="l1"),
    # The full SD 1.x architecture, LDM's recipe: for GPUs.
    TrainConfig(
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
)}


def read_config_file(path: Path) -> dict:
    """A YAML or JSON file of TrainConfig fields; a syntax error names the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: line {error.lineno}, column {error.colno}: {error.msg}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise UserError(f"{path}: {where}{getattr(error, 'problem', None) or error}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of option: value, got a {type(values).__name__}")
    return values


def load_config(preset_or_file: str | None = None, **overrides) -> TrainConfig:
    """A preset name, or a YAML/JSON file (which may name a ``preset`` to start from), then `overrides`;
    validated."""
    name = preset_or_file or DEFAULT_PRESET
    if name in PRESETS:
        config, values = PRESETS[name], {}
    else:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
        values = read_config_file(path)
        base = values.pop("preset", DEFAULT_PRESET)
        if base not in PRESETS:
            raise UserError(f"{path}: unknown preset {base!r}; choose one of {', '.join(PRESETS)}")
        config = PRESETS[base]
    preset = config
    config = config.replace(model=dict(config.model))  # never mutate the preset itself
    given = {k: v for k, v in overrides.items() if v is not None}
    config = config.replace(**renamed_values(values))
    config = config.replace(**renamed_values(given))
    if config.mode != preset.mode and "init" not in values | given:
        config = config.replace(init="random")  # the preset's start belongs to its mode
    if not config.final_resolution and "final_alternate_resolution" not in values | given:
        config = config.replace(final_alternate_resolution=None)  # the preset's final phase is off as a whole
    if not isinstance(config.model, dict):
        raise UserError(f"option model must be a mapping of ScratchVAE keywords, got {config.model!r}")
    if isinstance(config.model.get("block_out_channels"), list):
        config.model["block_out_channels"] = tuple(config.model["block_out_channels"])
    if isinstance(config.adam_betas, list):
        config.adam_betas = tuple(config.adam_betas)
    return config.validate()
