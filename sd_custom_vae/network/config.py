"""A VAE's AutoencoderKL config: every key, its type and range, checked in one place; ours ⇄ a ``config.json``.

The architecture keys, their defaults and their checks are the network's (``sd_custom_vae.network.architecture``);
this module adds how latents are scaled for a diffusion model (``LATENT_SPACE_KEYS``, not visible in the weights)
and the three keys that only name what diffusers builds (``down_block_types``, ``up_block_types``, ``act_fn``):
for the network we build they can take one value each, which ``check_diffusers_only_keys`` enforces and
``to_diffusers_config`` writes back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real

import diffusers

from ..base.errors import UserError
from .architecture import ARCHITECTURE_KEYS, DEFAULT, is_int, validate_architecture


@dataclass(frozen=True)
class LatentSpace:
    """How latents are scaled for a diffusion model, and how the model is run, with ``AutoencoderKL``'s defaults."""

    sample_size: int = 32  # the image side pipelines tile above
    scaling_factor: float = 0.18215  # SD's: 1/std of its VAE's latents over real images
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True  # pipelines run the VAE in float32 when the rest is float16


LATENT_SPACE = LatentSpace()
LATENT_SPACE_KEYS = tuple(f.name for f in fields(LatentSpace))
CONFIG_KEYS = ARCHITECTURE_KEYS + LATENT_SPACE_KEYS

# Only these block types and this activation describe the network we build.
DIFFUSERS_DOWN_BLOCK = "DownEncoderBlock2D"
DIFFUSERS_UP_BLOCK = "UpDecoderBlock2D"
DIFFUSERS_ACTIVATION = "silu"
DIFFUSERS_ONLY_KEYS = {"down_block_types": DIFFUSERS_DOWN_BLOCK, "up_block_types": DIFFUSERS_UP_BLOCK}


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _reals(key: str, value, length: int, positive: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or len(value) != length or not all(_is_real(v) for v in value):
        raise UserError(f"config {key} must be null or a list of {length} finite numbers (one per latent channel), "
                         f"got {value!r}")
    if positive and not all(v > 0 for v in value):
        raise UserError(f"config {key} must hold positive numbers (standard deviations), got {value!r}")


def validate_config(config: dict) -> None:
    """Raise ``UserError`` naming the key, the value and what is expected, for every key present (types strict,
    as ``validate_architecture``).

    Args:
        config: A config in our keys (the architecture and the latent space).
    """
    if not isinstance(config, dict):
        raise UserError(f"a VAE config must be a mapping of key: value, got a {type(config).__name__}")
    validate_architecture(config)
    if "force_upcast" in config and not isinstance(config["force_upcast"], bool):
        raise UserError(f"config force_upcast must be true or false, got {config['force_upcast']!r}")
    if "sample_size" in config:
        size = config["sample_size"]
        sizes = size if isinstance(size, (list, tuple)) else [size]
        if not sizes or len(sizes) > 2 or not all(is_int(s) and s > 0 for s in sizes):
            raise UserError(f"config sample_size must be a positive integer (or [height, width]), got {size!r}")
    if "scaling_factor" in config:
        value = config["scaling_factor"]
        if not _is_real(value) or value <= 0:
            raise UserError(f"config scaling_factor must be a positive finite number, got {value!r}")
    if config.get("shift_factor") is not None and not _is_real(config["shift_factor"]):
        raise UserError(f"config shift_factor must be null or a finite number, got {config['shift_factor']!r}")
    latent_channels = config.get("latent_channels", DEFAULT.latent_channels)
    _reals("latents_mean", config.get("latents_mean"), latent_channels)
    _reals("latents_std", config.get("latents_std"), latent_channels, positive=True)
    check_diffusers_only_keys(config, len(config.get("block_out_channels") or ()) or None)


def check_diffusers_only_keys(config: dict, levels: int | None) -> None:
    """``down_block_types``/``up_block_types``/``act_fn``, when given, must describe the network we build."""
    for key, supported in DIFFUSERS_ONLY_KEYS.items():
        if config.get(key) is None:
            continue
        value = config[key]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise UserError(f"config {key} must be a list of block type names, got {value!r}")
        unsupported = sorted({t for t in value if t != supported}, key=str)
        if unsupported:
            raise UserError(f"config {key} has {unsupported}; the supported value is {supported!r} for every level")
        if levels is not None and len(value) != levels:
            raise UserError(
                f"config {key} lists {len(value)} level(s) but block_out_channels has {levels}: give one per level"
            )
    if config.get("act_fn", DIFFUSERS_ACTIVATION) != DIFFUSERS_ACTIVATION:
        raise UserError(f"config act_fn is {config['act_fn']!r}; the supported value is {DIFFUSERS_ACTIVATION!r}")


def from_diffusers_config(config: dict) -> dict:
    """Read a diffusers AutoencoderKL (or our own) ``config.json`` into our config keys, validated.

    Args:
        config: The ``config.json``'s object; keys that are not ours (``_class_name`` ...) are dropped.
    """
    if not isinstance(config, dict):
        raise UserError(f"a VAE config must be a mapping of key: value, got a {type(config).__name__}")
    levels = len(config["block_out_channels"]) if isinstance(config.get("block_out_channels"), (list, tuple)) else None
    check_diffusers_only_keys(config, levels)
    ours = {key: config[key] for key in CONFIG_KEYS if key in config}
    validate_config(ours)
    if "block_out_channels" in ours:
        ours["block_out_channels"] = tuple(ours["block_out_channels"])
    return ours


def to_diffusers_config(config: dict) -> dict:
    """A ``config.json`` that stock ``diffusers.AutoencoderKL.from_pretrained`` reads.

    Args:
        config: A config in our keys, with ``block_out_channels``.
    """
    levels = len(config["block_out_channels"])
    out = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": diffusers.__version__,
        "down_block_types": [DIFFUSERS_DOWN_BLOCK] * levels,
        "up_block_types": [DIFFUSERS_UP_BLOCK] * levels,
        "act_fn": DIFFUSERS_ACTIVATION,
    }
    for key in CONFIG_KEYS:
        if key in config:
            value = config[key]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out
