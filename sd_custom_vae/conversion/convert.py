"""Renaming between schemes, with validation, and whole checkpoints from file to file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.deprecation import deprecated
from ..base.errors import UserError
from ..base.files import check_new
from ..network.config import ARCHITECTURE_KEYS, CONFIG_KEYS, from_diffusers_config, to_diffusers_config
from . import course
from .detect import Detection, _first, detect_scheme
from .formats import read_checkpoint, write_model_folder, write_safetensors
from .schemes import OURS, SCHEMES, adapt_tensor, count_levels, expected_shapes, format_slot, get_scheme, parse_keys

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# What a checkpoint can be written as: diffusers' names (a model folder, or one .safetensors file), the original
# LDM single file, or the course's layout.
TARGETS = ("diffusers", "ldm", course.NAME)
# Old spellings still accepted, with a warning: "scratch" named our models' keys, which are now diffusers'.
RENAMED_TARGETS = {"scratch": "diffusers"}


def resolve_target(name: str) -> str:
    """`name` as one of ``TARGETS`` (an old spelling warns and is translated); anything else is a UserError."""
    if name in RENAMED_TARGETS:
        deprecated(f"the output {name!r}", repr(RENAMED_TARGETS[name]))  # our models carry diffusers' names now
        return RENAMED_TARGETS[name]
    if name not in TARGETS:
        raise UserError(f"unknown output format {name!r}; expected one of {', '.join(TARGETS)}")
    return name


@dataclass
class VAECheckpoint:
    """A VAE's tensors under our names (diffusers'), with the config that describes them."""

    state_dict: dict[str, torch.Tensor]
    config: dict  # our config keys: the architecture, plus latent-space settings where known
    scheme: str  # the scheme the tensors were read in
    source: str = ""
    ignored: list[str] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)  # config values the weights could not tell and nothing gave
    notes: list[str] = field(default_factory=list)  # what the reading scheme asks the user to know

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())


def _checked_detection(state_dict: dict[str, torch.Tensor], config: dict | None, source: str) -> tuple[Detection, dict]:
    """Detect the scheme and architecture and check the tensors are exactly one complete VAE of it.

    `config`, when given, must agree with the architecture the shapes describe; its latent-space
    keys (scaling_factor, ...) are kept in the returned config, anything else (``_name_or_path``...) dropped.
    """
    config = {key: value for key, value in (config or {}).items() if key in CONFIG_KEYS}
    detection = detect_scheme(state_dict, config.get("norm_num_groups"))
    for key in ARCHITECTURE_KEYS:
        stored = config.get(key)
        stored = tuple(stored) if isinstance(stored, list) else stored
        if stored is not None and stored != detection.config[key]:
            raise UserError(f"{source}: config says {key}={stored!r} "
                             f"but the weights have {key}={detection.config[key]!r}")
    config.update(detection.config)
    for key, value in detection.implied.items():
        config.setdefault(key, value)

    num_levels = len(config["block_out_channels"])
    expected = expected_shapes(config)
    present = {slot: key for key, slot in detection.slots.items()}
    unexpected = [key for slot, key in present.items() if slot not in expected]
    if unexpected:
        raise UserError(f"{source}: {len(unexpected)} unexpected key(s) for this architecture: {_first(unexpected)}")
    spelling = detection.scheme if detection.scheme in SCHEMES else OURS  # the course's keys were renamed to ours
    missing = [format_slot(slot, spelling, num_levels) for slot in expected if slot not in present]
    if missing:
        raise UserError(f"{source}: {len(missing)} missing key(s): {_first(missing)}")
    for slot, shape in expected.items():
        key = present[slot]
        found = tuple(adapt_tensor(slot, detection.state_dict[key], OURS).shape)
        if found != shape:
            raise UserError(
                f"{source}: shape mismatch for {key!r}: the checkpoint has {tuple(detection.state_dict[key].shape)}, "
                f"the architecture read from the other weights needs {shape}"
            )
    check_values(detection.state_dict, source)
    return detection, config


def check_values(state_dict: dict[str, torch.Tensor], source: str, dtype: torch.dtype | None = None) -> None:
    """Every tensor is floating point and finite (and, for `dtype`, within its range): else a ValueError
    naming the tensor. A NaN, an inf or an integer weight is a broken checkpoint, not a VAE."""
    for key, tensor in state_dict.items():
        if not tensor.is_floating_point():
            raise UserError(f"{source}: tensor {key!r} holds {tensor.dtype} values; VAE weights are floating point")
        if tensor.dtype.itemsize == 1:  # float8: stored in it, computed in a wider type
            tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise UserError(f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s): the checkpoint is broken")
        if dtype is not None and tensor.numel():
            largest, limit = tensor.abs().max().item(), torch.finfo(dtype).max
            if largest > limit:
                raise UserError(
                    f"{source}: tensor {key!r} has a value of magnitude {largest:.4g}, beyond {dtype}'s range "
                    f"({limit:.4g}): it would become infinite; keep a wider dtype"
                )


def _rename(detection: Detection, target: str, config: dict) -> dict[str, torch.Tensor]:
    if target == course.NAME:
        return course.to_course(_rename(detection, OURS.name, config), config)
    scheme = get_scheme(target)
    num_levels = len(config["block_out_channels"])
    present = {slot: key for key, slot in detection.slots.items()}
    # network order, so files read top to bottom like the model
    return {
        format_slot(slot, scheme, num_levels): adapt_tensor(slot, detection.state_dict[present[slot]], scheme)
        for slot in expected_shapes(config)
    }


def as_checkpoint(
    state_dict: dict[str, torch.Tensor], config: dict | None = None, source: str = "state dict"
) -> VAECheckpoint:
    """A state dict in any scheme → a validated checkpoint under our names."""
    detection, config = _checked_detection(state_dict, config, source)
    return VAECheckpoint(
        _rename(detection, OURS.name, config), config, detection.scheme, source, detection.ignored, detection.assumed,
        detection.notes,
    )


def to_scratch(
    state_dict: dict[str, torch.Tensor], config: dict | None = None, source: str = "state dict"
) -> VAECheckpoint:
    """The former name of ``as_checkpoint``."""
    deprecated("conversion.to_scratch", "conversion.as_checkpoint", stacklevel=3)
    return as_checkpoint(state_dict, config, source)


def key_scheme(keys) -> str:
    """The scheme that spells the most of `keys` (keys all schemes share, such as conv_in, tie: ours wins)."""
    keys = list(keys)
    if course.is_course(keys):
        return course.NAME
    return max(SCHEMES, key=lambda name: len(parse_keys(keys, name)[0]))


def rename_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of another scheme renamed to ours, leniently, for a loader that checks the result itself.

    Unlike ``as_checkpoint`` nothing is validated: keys that parse in no scheme are kept as they are,
    so that the loader reports them as unexpected (and the ones it lacks as missing). Returns
    `state_dict` itself when it already uses our names.
    """
    scheme = key_scheme(state_dict)
    if scheme == OURS.name:
        return state_dict
    if scheme == course.NAME:
        return course.from_course(state_dict)
    slots, unknown = parse_keys(state_dict, scheme)
    num_levels = count_levels(slots.values())
    renamed = {
        format_slot(slot, OURS, num_levels): adapt_tensor(slot, state_dict[key], OURS) for key, slot in slots.items()
    }
    renamed.update({key: state_dict[key] for key in unknown})
    return renamed


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], to: str, config: dict | None = None
) -> dict[str, torch.Tensor]:
    """Any scheme → `to` (one of ``TARGETS``), validated on the way."""
    to = resolve_target(to)
    detection, config = _checked_detection(state_dict, config, "state dict")
    return _rename(detection, to, config)


def load_checkpoint(path: str | os.PathLike, config: dict | None = None, variant: str | None = None) -> VAECheckpoint:
    """Any supported file or folder → a validated checkpoint under our names.

    Config precedence: the folder's ``config.json`` or the file's own metadata, then `config`.
    """
    tensors, stored = read_checkpoint(path, variant)
    merged = from_diffusers_config(stored) if stored else {}
    for key, value in (config or {}).items():
        value = tuple(value) if isinstance(value, list) else value
        # what the file records about its architecture is a fact about its weights, not a default to override
        if key in ARCHITECTURE_KEYS and key in merged and merged[key] != value:
            raise UserError(f"{path} records {key}={merged[key]!r}, not {value!r}: a value given for {key} is for "
                             "files that do not record it; leave it out")
        merged[key] = value
    return as_checkpoint(tensors, merged, source=str(path))


def save_checkpoint(
    checkpoint: VAECheckpoint,
    output: str | os.PathLike,
    to: str,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `checkpoint` in the names of `to` (one of ``TARGETS``): with diffusers' names a model folder, or one
    file if `output` ends in ``.safetensors``; ldm and course as one ``.safetensors`` file. Atomically; an
    existing output is replaced, as a whole, only with `overwrite`."""
    to = resolve_target(to)
    output = check_new(output, overwrite)
    folder = to == "diffusers" and output.suffix != ".safetensors"
    if not folder and output.suffix != ".safetensors":
        raise UserError(f"{output}: {to} output is a single file and must end in .safetensors")
    if folder and output.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise UserError(f"{output}: diffusers output is a model folder or a .safetensors file, "
                         f"not a {output.suffix} file")
    renamed = convert_state_dict(cast(checkpoint.state_dict, dtype, checkpoint.source), to, checkpoint.config)
    if folder:
        return write_model_folder(renamed, to_diffusers_config(checkpoint.config), output, overwrite=overwrite)
    return write_safetensors(renamed, output, config=_jsonable(checkpoint.config))


def cast(
    state_dict: dict[str, torch.Tensor], dtype: str | torch.dtype | None, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Every tensor in `dtype` ("fp32", "fp16", "bf16" or a torch dtype); refused if a value would overflow it."""
    if dtype is None:
        return state_dict
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    check_values(state_dict, source, dtype)
    return {k: v.to(dtype) for k, v in state_dict.items()}


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


@dataclass
class ConversionSummary:
    source: str
    scheme: str
    tensors: int
    parameters: int
    output: str
    target: str
    ignored: int
    assumed: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        ignored = f", ignored {self.ignored} non-VAE keys" if self.ignored else ""
        lines = [
            f"{self.source}: {self.scheme} scheme, {self.tensors} tensors, {self.parameters:,} parameters{ignored} "
            f"→ {self.target} at {self.output}"
        ]
        for key, value in self.assumed.items():
            lines.append(f"note: assumed {key}={value} (the file does not record it and the weights cannot tell it); "
                         f"pass --{key.replace('_', '-')} if the VAE was built with another value")
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    to: str,
    dtype: str | None = None,
    config: dict | None = None,
    overwrite: bool = False,
) -> ConversionSummary:
    to = resolve_target(to)
    check_new(output, overwrite)  # before reading a multi-GB input
    checkpoint = load_checkpoint(source, config)
    path = save_checkpoint(checkpoint, output, to, dtype, overwrite)
    notes = list(checkpoint.notes)
    if to == course.NAME:
        notes += [n for n in (course.EPSILON_NOTE, course.latent_scale_note(checkpoint.config))
                  if n not in (None, *notes)]
    return ConversionSummary(
        str(source), checkpoint.scheme, len(checkpoint.state_dict), checkpoint.num_parameters, str(path), to,
        len(checkpoint.ignored), checkpoint.assumed, notes,
    )
