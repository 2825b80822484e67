"""A state dict's keys renamed between schemes, validated on the way: in memory, no file read or written."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..base.deprecation import deprecated
from ..base.errors import UserError
from ..network.config import ARCHITECTURE_KEYS, CONFIG_KEYS
from . import course
from .detect import Detection, _first, detect_scheme
from .schemes import OURS, SCHEMES, adapt_tensor, count_levels, expected_shapes, format_slot, get_scheme, parse_keys

# What a checkpoint can be written as: diffusers' names (a model folder, or one .safetensors file), the original
# LDM single file, or the course's layout.
TARGETS = ("diffusers", "ldm", course.NAME)
# Old spellings still accepted, with a warning: "scratch" named our models' keys, which are now diffusers'.
RENAMED_TARGETS = {"scratch": "diffusers"}


def resolve_target(name: str) -> str:
    """`name` as one of ``TARGETS`` (an old spelling warns and is translated); anything else is a UserError.

    Args:
        name: An output format's name.
    """
    if name in RENAMED_TARGETS:
        deprecated(f"the output {name!r}", repr(RENAMED_TARGETS[name]))  # our models carry diffusers' names now
        return RENAMED_TARGETS[name]
    if name not in TARGETS:
        raise UserError(f"unknown output format {name!r}; expected one of {', '.join(TARGETS)}")
    return name


@dataclass
class VAECheckpoint:
    """A VAE's tensors under our names (diffusers'), with the config that describes them.

    Attributes:
        state_dict: The tensors, under our names, in the network's order.
        config: Our config keys: the architecture, plus the latent-space settings where known.
        scheme: The scheme the tensors were read in.
        source: Where they were read from, for messages.
        ignored: The keys read that are no part of a VAE (a whole SD checkpoint's UNet ...).
        assumed: The config values the weights could not tell and nothing gave.
        notes: What the reading scheme asks the user to know.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict
    scheme: str
    source: str = ""
    ignored: list[str] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

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
    """Every tensor is floating point and finite (and, for `dtype`, within its range): else a UserError
    naming the tensor. A NaN, an inf or an integer weight is a broken checkpoint, not a VAE.

    Args:
        state_dict: The tensors.
        source: Where they come from, for the message.
        dtype: The dtype they are to be cast to, if any.
    """
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
    """A state dict in any scheme → a validated checkpoint under our names.

    Args:
        state_dict: The tensors, in any scheme ``detect_scheme`` knows.
        config: What the weights cannot tell (``norm_num_groups``, ``scaling_factor`` ...); architecture keys in it
            must agree with the shapes.
        source: Where the tensors come from, for messages.
    """
    detection, config = _checked_detection(state_dict, config, source)
    return VAECheckpoint(
        _rename(detection, OURS.name, config), config, detection.scheme, source, detection.ignored, detection.assumed,
        detection.notes,
    )


def to_scratch(
    state_dict: dict[str, torch.Tensor], config: dict | None = None, source: str = "state dict"
) -> VAECheckpoint:
    """The former name of ``as_checkpoint``.

    Args:
        state_dict: As ``as_checkpoint``'s.
        config: As ``as_checkpoint``'s.
        source: As ``as_checkpoint``'s.
    """
    deprecated("conversion.to_scratch", "conversion.as_checkpoint", stacklevel=3)
    return as_checkpoint(state_dict, config, source)


def key_scheme(keys: Iterable[str]) -> str:
    """The scheme that spells the most of `keys` (keys all schemes share, such as conv_in, tie: ours wins).

    Args:
        keys: State-dict keys.
    """
    keys = list(keys)
    if course.is_course(keys):
        return course.NAME
    return max(SCHEMES, key=lambda name: len(parse_keys(keys, name)[0]))


def rename_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of another scheme renamed to ours, leniently, for a loader that checks the result itself.

    Unlike ``as_checkpoint`` nothing is validated: keys that parse in no scheme are kept as they are,
    so that the loader reports them as unexpected (and the ones it lacks as missing). Returns
    `state_dict` itself when it already uses our names.

    Args:
        state_dict: The tensors, in any scheme.
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
    """Any scheme → `to` (one of ``TARGETS``), validated on the way.

    Args:
        state_dict: The tensors, in any scheme ``detect_scheme`` knows.
        to: The scheme to rename them to, one of ``TARGETS``.
        config: What the weights cannot tell, as ``as_checkpoint`` takes it.
    """
    to = resolve_target(to)
    detection, config = _checked_detection(state_dict, config, "state dict")
    return _rename(detection, to, config)


