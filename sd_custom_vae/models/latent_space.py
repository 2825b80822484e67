"""How a VAE's latents are scaled for a diffusion model: the settings that say it, and the calibration rule.

A UNet is trained on latents of roughly unit variance: pipelines feed it ``(z - shift_factor) *
scaling_factor`` (or use ``latents_mean``/``latents_std``). These settings live in the VAE's config,
not its weights (``LATENT_SPACE_KEYS``); a student that reproduces a teacher's latents
inherits them, and ``calibrate`` measures them for a new VAE.

"Never calibrated" rule: a VAE counts as calibrated when its config carries the record ``calibrate``
writes (``_calibration``), or when its ``scaling_factor`` was set away from the 0.18215 default
(published VAEs such as SDXL's 0.13025). A VAE still at the default with no record most likely
inherited a number measured on someone else's encoder.
"""

from __future__ import annotations

from ..network.config import LATENT_SPACE, LATENT_SPACE_KEYS

DEFAULT_SCALING_FACTOR = LATENT_SPACE.scaling_factor  # CustomAutoencoderKL's (and AutoencoderKL's) default
# Underscore: diffusers keeps such config keys through save_pretrained/from_pretrained without passing
# them to __init__, and without warning about unexpected attributes.
CALIBRATION_KEY = "_calibration"
# What a VAE speaking another's latent space takes from it: how its latents are scaled, and the record
# of how that was measured (sample_size is about images, not latents).
INHERITED_KEYS = (*(key for key in LATENT_SPACE_KEYS if key != "sample_size"), CALIBRATION_KEY)


def is_calibrated(config) -> bool:
    """The rule in the module docstring, for a VAE's config (a model's ``.config`` or a dict)."""
    return config.get(CALIBRATION_KEY) is not None or config.get("scaling_factor") != DEFAULT_SCALING_FACTOR


def inherited(config) -> dict:
    """The latent-space settings of `config` that are set, for a VAE that reproduces its latents."""
    return {key: config[key] for key in INHERITED_KEYS if config.get(key) is not None}
