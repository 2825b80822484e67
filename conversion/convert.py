"""Renaming between schemes, with validation, and whole checkpoints from file to file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .configs import ARCHITECTURE_KEYS, CONFIG_KEYS, from_diffusers_config, to_diffusers_config
from .detect import Detection, _first, detect_scheme
from .files import check_new
from .formats import read_checkpoint, write_model_folder, write_safetensors
from .schemes import SCHEMES, SCRATCH, adapt_tensor, count_levels, expected_shapes, format_slot, get_scheme, parse_keys

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TARGETS = ("diffusers", "ldm", "scratch")


@dataclass
class VAECheckpoint:
    """A VAE's tensors under our (scratch) names, with the config that describes them."""

    state_dict: dict[str, torch.Tensor]
    config: dict  # our config keys: the architecture, plus latent-space settings where known
    scheme: str  # the scheme the tensors were read in
    source: str = ""
    ignored: list[str] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)  # config values the weights could not tell and nothing gave

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
            raise ValueError(f"{source}: config says {key}={stored!r} but the weights have {key}={detection.config[key]!r}")
    config.update(detection.config)

    num_levels = len(config["block_out_channels"])
    expected = expected_shapes(config)
    present = {slot: key for key, slot in detection.slots.items()}
    unexpected = [key for slot, key in present.items() if slot not in expected]
    if unexpected:
        raise ValueError(f"{source}: {len(unexpected)} unexpected key(s) for this architecture: {_first(unexpected)}")
    missing = [format_slot(slot, detection.scheme, num_levels) for slot in expected if slot not in present]
    if missing:
        raise ValueError(f"{source}: {len(missing)} missing key(s): {_first(missing)}")
    for slot, shape in expected.items():
        key = present[slot]
        found = tuple(adapt_tensor(slot, detection.state_dict[key], SCRATCH).shape)
        if found != shape:
            raise ValueError(
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
            raise ValueError(f"{source}: tensor {key!r} holds {tensor.dtype} values; VAE weights are floating point")
        if not torch.isfinite(tensor).all():
            bad = (~torch.isfinite(tensor)).sum().item()
            raise ValueError(f"{source}: tensor {key!r} holds {bad} NaN or infinite value(s): the checkpoint is broken")
        if dtype is not None and tensor.numel():
            largest, limit = tensor.abs().max().item(), torch.finfo(dtype).max
            if largest > limit:
                raise ValueError(
                    f"{source}: tensor {key!r} has a value of magnitude {largest:.4g}, beyond {dtype}'s range "
                    f"({limit:.4g}): it would become infinite; keep a wider dtype"
                )


def _rename(detection: Detection, target: str, config: dict) -> dict[str, torch.Tensor]:
    scheme = get_scheme(target)
    num_levels = len(config["block_out_channels"])
    present = {slot: key for key, slot in detection.slots.items()}
    # network order, so files read top to bottom like the model
    return {
        format_slot(slot, scheme, num_levels): adapt_tensor(slot, detection.state_dict[present[slot]], scheme)
        for slot in expected_shapes(config)
    }


def to_scratch(
    state_dict: dict[str, torch.Tensor], config: dict | None = None, source: str = "state dict"
) -> VAECheckpoint:
    """Any scheme → a validated checkpoint under our names."""
    detection, config = _checked_detection(state_dict, config, source)
    return VAECheckpoint(
        _rename(detection, SCRATCH.name, config), config, detection.scheme, source, detection.ignored, detection.assumed
    )


def key_scheme(keys) -> str:
    """The scheme that spells the most of `keys` (keys all schemes share, such as conv_in, tie: ours wins)."""
    keys = list(keys)
    return max(SCHEMES, key=lambda name: len(parse_keys(keys, name)[0]))


def rename_to_scratch(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of another scheme renamed to ours, leniently, for a loader that checks the result itself.

    Unlike ``to_scratch`` nothing is validated: keys that parse in no scheme are kept as they are,
    so that the loader reports them as unexpected (and the ones it lacks as missing). Returns
    `state_dict` itself when it already uses our names.
    """
    scheme = key_scheme(state_dict)
    if scheme == SCRATCH.name:
        return state_dict
    slots, unknown = parse_keys(state_dict, scheme)
    num_levels = count_levels(slots.values())
    renamed = {format_slot(slot, SCRATCH, num_levels): adapt_tensor(slot, state_dict[key], SCRATCH) for key, slot in slots.items()}
    renamed.update({key: state_dict[key] for key in unknown})
    return renamed


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], to: str, config: dict | None = None
) -> dict[str, torch.Tensor]:
    """Any scheme → `to` (``scratch``, ``diffusers`` or ``ldm``), validated on the way."""
    get_scheme(to)
    detection, config = _checked_detection(state_dict, config, "state dict")
    return _rename(detection, to, config)


def load_checkpoint(path: str | os.PathLike, config: dict | None = None, variant: str | None = None) -> VAECheckpoint:
    """Any supported file or folder → a validated checkpoint under our names.

    Config precedence: the folder's ``config.json`` or the file's own metadata, then `config`.
    """
    tensors, stored = read_checkpoint(path, variant)
    merged = from_diffusers_config(stored) if stored else {}
    merged.update(config or {})
    return to_scratch(tensors, merged, source=str(path))


def save_checkpoint(
    checkpoint: VAECheckpoint,
    output: str | os.PathLike,
    to: str,
    dtype: str | torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `checkpoint` as a diffusers folder (``to="diffusers"``) or one ``.safetensors`` file, atomically;
    an existing output is replaced, as a whole, only with `overwrite`."""
    if to not in TARGETS:
        raise ValueError(f"unknown output format {to!r}; expected one of {TARGETS}")
    output = check_new(output, overwrite)
    if to != "diffusers" and output.suffix != ".safetensors":
        raise ValueError(f"{output}: {to} output is a single file and must end in .safetensors")
    if to == "diffusers" and output.suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        raise ValueError(f"{output}: diffusers output is a model folder, not a {output.suffix} file")
    renamed = convert_state_dict(cast(checkpoint.state_dict, dtype, checkpoint.source), to, checkpoint.config)
    if to == "diffusers":
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
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
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

    def __str__(self) -> str:
        ignored = f", ignored {self.ignored} non-VAE keys" if self.ignored else ""
        line = (
            f"{self.source}: {self.scheme} scheme, {self.tensors} tensors, {self.parameters:,} parameters{ignored} "
            f"→ {self.target} at {self.output}"
        )
        for key, value in self.assumed.items():
            line += f"\nnote: assumed {key}={value} (the file does not record it and the weights cannot tell it); " \
                f"pass --{key.replace('_', '-')} if the VAE was built with another value"
        return line


def convert_checkpoint(
    source: str | os.PathLike,
    output: str | os.PathLike,
    to: str,
    dtype: str | None = None,
    config: dict | None = None,
    overwrite: bool = False,
) -> ConversionSummary:
    check_new(output, overwrite)  # before reading a multi-GB input
    checkpoint = load_checkpoint(source, config)
    path = save_checkpoint(checkpoint, output, to, dtype, overwrite)
    return ConversionSummary(
        str(source), checkpoint.scheme, len(checkpoint.state_dict), checkpoint.num_parameters, str(path), to,
        len(checkpoint.ignored), checkpoint.assumed,
    )
