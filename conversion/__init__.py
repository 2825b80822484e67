"""State-dict key maps between our names, diffusers ``AutoencoderKL`` and the original LDM files,
and checkpoint files in and out. The only place in the project that knows foreign key names."""

from .configs import ARCHITECTURE_KEYS, CONFIG_KEYS, from_diffusers_config, to_diffusers_config
from .convert import (
    TARGETS,
    ConversionSummary,
    VAECheckpoint,
    convert_checkpoint,
    convert_state_dict,
    load_checkpoint,
    save_checkpoint,
    to_scratch,
)
from .detect import Detection, detect_scheme
from .formats import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_path,
    check_writable,
    read_checkpoint,
    write_json,
    write_model_folder,
    write_safetensors,
)
from .schemes import SCHEMES, Slot, expected_shapes

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "ARCHITECTURE_KEYS",
    "CONFIG_KEYS",
    "SCHEMES",
    "TARGETS",
    "ConversionSummary",
    "Detection",
    "Slot",
    "VAECheckpoint",
    "atomic_path",
    "check_writable",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_scheme",
    "expected_shapes",
    "from_diffusers_config",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "to_diffusers_config",
    "to_scratch",
    "write_json",
    "write_model_folder",
    "write_safetensors",
]
