"""Layer 2, conversion: checkpoints of SD-family VAEs in every naming scheme and file format, in and out; the
only place in the project that knows foreign key names.

Schemes (``detect_scheme`` tells which a state dict uses): diffusers' ``AutoencoderKL`` names, which our
models carry; the original LDM single-file names; the course's ``nn.Sequential`` layout; and, read only,
the names of sd-custom-vae 0.2. Builds on the network and ``base`` alone. The top-level ``conversion``
package is its public face.
"""

from . import course
from .convert import DTYPES, ConversionSummary, convert_checkpoint, load_checkpoint, save_checkpoint
from .detect import Detection, detect_scheme
from .formats import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    read_checkpoint,
    shard_files,
    write_model_folder,
    write_safetensors,
)
from .renaming import (
    RENAMED_TARGETS,
    TARGETS,
    VAECheckpoint,
    as_checkpoint,
    check_values,
    convert_state_dict,
    key_scheme,
    rename_to_ours,
    resolve_target,
    to_scratch,
)
from .schemes import OURS, SCHEMES, Slot, expected_shapes, expected_tensors

__all__ = [
    "CONFIG_NAME", "DTYPES", "OURS", "RENAMED_TARGETS", "SCHEMES", "TARGETS", "WEIGHTS_NAME", "ConversionSummary",
    "Detection", "Slot", "VAECheckpoint", "as_checkpoint", "check_values", "convert_checkpoint",
    "convert_state_dict", "course", "detect_scheme", "expected_shapes", "expected_tensors", "key_scheme",
    "load_checkpoint", "read_checkpoint", "rename_to_ours", "resolve_target", "save_checkpoint", "shard_files",
    "to_scratch", "write_model_folder", "write_safetensors",
]
