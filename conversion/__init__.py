"""Checkpoints of SD-family VAEs in every naming scheme and file format, in and out: the public face of
``sd_custom_vae.conversion``, with the config schema (``sd_custom_vae.network.config``) and the safe-writing
helpers (``sd_custom_vae.base.files``) it used to hold.

The library never imports this name (a user's own ``conversion.py`` cannot shadow it); it is for users:
``from conversion import convert_checkpoint, detect_scheme, load_checkpoint``.
"""

from sd_custom_vae.base.files import (
    atomic_folder,
    atomic_path,
    check_new,
    check_writable,
    read_json,
    write_json,
)
from sd_custom_vae.conversion import (
    CONFIG_NAME,
    DTYPES,
    OURS,
    RENAMED_TARGETS,
    SCHEMES,
    TARGETS,
    WEIGHTS_NAME,
    ConversionSummary,
    Detection,
    Slot,
    VAECheckpoint,
    as_checkpoint,
    check_values,
    convert_checkpoint,
    convert_state_dict,
    course,
    detect_scheme,
    expected_shapes,
    expected_tensors,
    key_scheme,
    load_checkpoint,
    read_checkpoint,
    rename_to_ours,
    resolve_target,
    save_checkpoint,
    shard_files,
    to_scratch,
    write_model_folder,
    write_safetensors,
)
from sd_custom_vae.network.config import (
    ARCHITECTURE_KEYS,
    CONFIG_KEYS,
    DIFFUSERS_DOWN_BLOCK,
    DIFFUSERS_UP_BLOCK,
    LATENT_SPACE,
    LATENT_SPACE_KEYS,
    from_diffusers_config,
    to_diffusers_config,
    validate_config,
)

__all__ = [
    "ARCHITECTURE_KEYS", "CONFIG_KEYS", "CONFIG_NAME", "DIFFUSERS_DOWN_BLOCK", "DIFFUSERS_UP_BLOCK", "DTYPES",
    "LATENT_SPACE", "LATENT_SPACE_KEYS", "OURS", "RENAMED_TARGETS", "SCHEMES", "TARGETS", "WEIGHTS_NAME",
    "ConversionSummary",
    "Detection", "Slot", "VAECheckpoint", "as_checkpoint", "atomic_folder", "atomic_path", "check_new",
    "check_values", "check_writable", "convert_checkpoint", "convert_state_dict", "course", "detect_scheme",
    "expected_shapes", "expected_tensors", "from_diffusers_config", "key_scheme", "load_checkpoint", "read_checkpoint",
    "read_json", "rename_to_ours", "resolve_target", "save_checkpoint", "shard_files", "to_diffusers_config",
    "to_scratch", "validate_config",
    "write_json", "write_model_folder", "write_safetensors",
]
