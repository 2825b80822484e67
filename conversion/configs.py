"""Our config keys ⇄ a diffusers ``AutoencoderKL`` ``config.json``."""

from __future__ import annotations

ARCHITECTURE_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "norm_num_groups",
    "mid_block_add_attention",
    "use_quant_conv",
    "use_post_quant_conv",
)
# How latents are scaled for a diffusion model, and how the model is run: not visible in the weights.
LATENT_SPACE_KEYS = ("sample_size", "scaling_factor", "shift_factor", "latents_mean", "latents_std", "force_upcast")
CONFIG_KEYS = ARCHITECTURE_KEYS + LATENT_SPACE_KEYS

# Only these block types and this activation describe the network we build.
DIFFUSERS_DOWN_BLOCK = "DownEncoderBlock2D"
DIFFUSERS_UP_BLOCK = "UpDecoderBlock2D"
DIFFUSERS_ACTIVATION = "silu"


def _diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:  # conversion works without diffusers installed
        return "0.0.0"


def from_diffusers_config(config: dict) -> dict:
    """Read a diffusers AutoencoderKL (or our own) ``config.json`` into our config keys."""
    for key, allowed in (("down_block_types", DIFFUSERS_DOWN_BLOCK), ("up_block_types", DIFFUSERS_UP_BLOCK)):
        unsupported = [t for t in config.get(key, ()) if t != allowed]
        if unsupported:
            raise ValueError(f"config {key} has {unsupported}; only {allowed} levels are supported")
    if config.get("act_fn", DIFFUSERS_ACTIVATION) != DIFFUSERS_ACTIVATION:
        raise ValueError(f"config act_fn is {config['act_fn']!r}; only {DIFFUSERS_ACTIVATION!r} is supported")
    ours = {key: config[key] for key in CONFIG_KEYS if key in config}
    if "block_out_channels" in ours:
        ours["block_out_channels"] = tuple(ours["block_out_channels"])
    return ours


def to_diffusers_config(config: dict) -> dict:
    """A ``config.json`` that stock ``diffusers.AutoencoderKL.from_pretrained`` reads."""
    levels = len(config["block_out_channels"])
    out = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": _diffusers_version(),
        "down_block_types": [DIFFUSERS_DOWN_BLOCK] * levels,
        "up_block_types": [DIFFUSERS_UP_BLOCK] * levels,
        "act_fn": DIFFUSERS_ACTIVATION,
    }
    for key in CONFIG_KEYS:
        if key in config:
            value = config[key]
            out[key] = list(value) if isinstance(value, tuple) else value
    return out
