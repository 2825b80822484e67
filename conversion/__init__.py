"""Checkpoints of SD-family VAEs in every naming scheme and file format, in and out: the only place in the
project that knows foreign key names.

Schemes (``detect_scheme`` tells which a state dict uses): diffusers' ``AutoencoderKL`` names, which our
models carry; the original LDM single-file names; the course's ``nn.Sequential`` layout; and, read only,
the names of sd-custom-vae 0.2. Imports nothing of ``sd_custom_vae`` but its network.
"""

from sd_custom_vae.network import ARCHITECTURE_KEYS  # the network's, beside the other config keys

from . import course
from .configs import (
    CONFIG_KEYS,
    DIFFUSERS_DOWN_BLOCK,
    DIFFUSERS_UP_BLOCK,
    LATENT_SPACE,
    LATENT_SPACE_KEYS,
    from_diffusers_config,
    to_diffusers_config,
    validate_config,
)
from .convert import (
    DTYPES,
    RENAMED_TARGETS,
    TARGETS,
    ConversionSummary,
    VAECheckpoint,
    as_checkpoint,
    check_values,
    convert_checkpoint,
    convert_state_dict,
    key_scheme,
    load_checkpoint,
    rename_to_ours,
    resolve_target,
    save_checkpoint,
    to_scratch,
)
from .detect import Detection, detect_scheme
from .files import atomic_folder, atomic_path, check_new, check_writable, read_json, write_json
from .formats import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint, shard_files, write_model_folder, write_safetensors
from .schemes import OURS, SCHEMES, Slot, expected_shapes, expected_tensors

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
