"""State-dict key maps between our names, diffusers ``AutoencoderKL`` and the original LDM files,
and checkpoint files in and out. The only place in the project that knows foreign key names."""

from .configs import (
    ARCHITECTURE_KEYS,
    CONFIG_KEYS,
    DIFFUSERS_DOWN_BLOCK,
    DIFFUSERS_UP_BLOCK,
    LATENT_SPACE_KEYS,
    from_diffusers_config,
    to_diffusers_config,
    validate_config,
)
from .convert import (
    DTYPES,
    TARGETS,
    ConversionSummary,
    VAECheckpoint,
    convert_checkpoint,
    convert_state_dict,
    key_scheme,
    load_checkpoint,
    rename_to_scratch,
    save_checkpoint,
    to_scratch,
)
from .detect import Detection, detect_scheme
from .files import atomic_folder, atomic_path, check_new, check_writable, read_json, write_json
from .formats import CONFIG_NAME, WEIGHTS_NAME, read_checkpoint, write_model_folder, write_safetensors
from .schemes import SCHEMES, Slot, expected_shapes

__all__ = [
    "CONFIG_NAME",
    "DTYPES",
    "WEIGHTS_NAME",
    "ARCHITECTURE_KEYS",
    "CONFIG_KEYS",
    "DIFFUSERS_DOWN_BLOCK",
    "DIFFUSERS_UP_BLOCK",
    "LATENT_SPACE_KEYS",
    "SCHEMES",
    "TARGETS",
    "ConversionSummary",
    "Detection",
    "Slot",
    "VAECheckpoint",
    "atomic_folder",
    "atomic_path",
    "check_new",
    "check_writable",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_scheme",
    "expected_shapes",
    "key_scheme",
    "from_diffusers_config",
    "load_checkpoint",
    "read_checkpoint",
    "read_json",
    "rename_to_scratch",
    "save_checkpoint",
    "to_diffusers_config",
    "to_scratch",
    "validate_config",
    "write_json",
    "write_model_folder",
    "write_safetensors",
]
