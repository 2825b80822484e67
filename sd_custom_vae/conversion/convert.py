"""Whole checkpoints, file to file: read and validated, written in another scheme, format or dtype."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..base.errors import UserError
from ..base.files import check_new
from ..network.config import ARCHITECTURE_KEYS, from_diffusers_config, to_diffusers_config
from . import course
from .formats import read_checkpoint, write_model_folder, write_safetensors
from .renaming import VAECheckpoint, as_checkpoint, check_values, convert_state_dict, resolve_target

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_checkpoint(path: str | os.PathLike, config: dict | None = None, variant: str | None = None) -> VAECheckpoint:
    """Any supported file or folder → a validated checkpoint under our names.

    Args:
        path: A ``.safetensors``, ``.ckpt``/``.pt``/``.pth``/``.bin`` file (pickles load with
            ``weights_only=True``), or a model folder (sharded or not).
        config: What the file does not record (``norm_num_groups``, ``scaling_factor`` ...); what it records
            wins, and an architecture key that disagrees with it is refused.
        variant: The weights variant of a model folder (``fp16`` reads ``*.fp16.safetensors``).
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
    existing output is replaced, as a whole, only with `overwrite`.

    Args:
        checkpoint: What ``load_checkpoint`` or ``as_checkpoint`` returned.
        output: The folder or file to write.
        to: The names to write, one of ``TARGETS``.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` or a torch dtype (default: as stored); refused if a value would
            overflow it.
        overwrite: Replace an existing output.

    Returns:
        The path written.
    """
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
    """What ``convert_checkpoint`` did; ``str()`` of it is the command line's report.

    Attributes:
        source: The file or folder read.
        scheme: The scheme it was read in.
        tensors: The tensors written.
        parameters: The parameters they hold.
        output: The path written.
        target: The names written, one of ``TARGETS``.
        ignored: How many keys read were no part of a VAE.
        assumed: The config values the weights could not tell and nothing gave.
        notes: What the user should know about the output.
    """

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
    """Convert a checkpoint file or folder to another scheme, format or dtype: ``load_checkpoint``, then
    ``save_checkpoint``.

    Args:
        source: A file or folder ``load_checkpoint`` reads.
        output: The folder or file to write; it must not exist unless `overwrite`.
        to: The names to write, one of ``TARGETS``.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (default: as stored).
        config: What the file does not record, as ``load_checkpoint`` takes it.
        overwrite: Replace an existing output, as a whole.

    Returns:
        What was read and written.
    """
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
