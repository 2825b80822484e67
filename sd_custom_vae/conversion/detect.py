"""Which scheme a state dict is written in, where its VAE keys are, and what architecture they describe."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..base.errors import UserError
from ..network import DEFAULT
from . import course
from .schemes import OURS, SCHEMES, Slot, count_levels, parse_keys

# Prefixes under which a whole checkpoint keeps its VAE: LDM/SD single files and merged dicts.
VAE_PREFIXES = ("first_stage_model.", "vae.")
# Keys a VAE-only training checkpoint may carry that are not part of the network.
NON_NETWORK_PREFIXES = ("loss.", "model_ema.", "discriminator.", "lpips.")


@dataclass
class Detection:
    """What ``detect_scheme`` found in a state dict.

    Attributes:
        scheme: The scheme's name.
        state_dict: The VAE's tensors, prefix removed, in `scheme` (the course's: renamed to ours).
        slots: Each key of `state_dict` → its slot.
        config: The architecture, in our config keys.
        prefix: The prefix the VAE's keys had (``first_stage_model.`` in a whole SD checkpoint), or "".
        ignored: The keys that are no part of the VAE network.
        assumed: The config values taken by default, the weights being silent.
        implied: The config values the scheme itself fixes (the course's scale).
        notes: What a user converting from this scheme should know.
    """

    scheme: str
    state_dict: dict[str, torch.Tensor]
    slots: dict[str, Slot]
    config: dict
    prefix: str = ""
    ignored: list[str] = field(default_factory=list)
    assumed: dict = field(default_factory=dict)
    implied: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _strip_prefix(state_dict: dict) -> tuple[str, dict, list[str]]:
    for prefix in VAE_PREFIXES:
        inside = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if inside:
            return prefix, inside, [k for k in state_dict if not k.startswith(prefix)]
    return "", dict(state_dict), []


def _first(keys: list[str], count: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:count])
    return shown + (f" and {len(keys) - count} more" if len(keys) > count else "")


def detect_scheme(state_dict: dict[str, torch.Tensor], norm_num_groups: int | None = None) -> Detection:
    """Find the VAE in `state_dict`, name its scheme and infer its architecture from tensor shapes.

    A whole Stable Diffusion checkpoint is accepted: its ``first_stage_model.`` (or ``vae.``)
    keys are kept and the UNet and text encoder keys are reported as ignored. GroupNorm's group
    count leaves no trace in the shapes; it is taken from `norm_num_groups`, else 32 (every SD-family VAE).
    The course's layout (``course.py``) is recognised by its positional keys and renamed to ours first.

    Args:
        state_dict: A VAE's tensors, or a whole SD checkpoint's.
        norm_num_groups: GroupNorm's groups, if known (the shapes cannot tell it).

    Raises:
        UserError: No VAE there, or keys of no known scheme (the message names them).
    """
    if not isinstance(state_dict, dict) or not state_dict:
        raise UserError("the state dict is empty: no VAE tensors to read")
    prefix, vae_dict, ignored = _strip_prefix(state_dict)
    extra = [k for k in vae_dict if k.startswith(NON_NETWORK_PREFIXES)]
    for key in extra:
        del vae_dict[key]
    ignored += [prefix + k for k in extra]

    if course.is_course(vae_dict):
        groups = course.ARCHITECTURE["norm_num_groups"]
        if norm_num_groups is not None and norm_num_groups != groups:
            raise UserError(f"the course's VAE_Encoder/VAE_Decoder layout fixes norm_num_groups={groups} (its "
                             f"nn.GroupNorm({groups}, ...)), and the weights are read as such: norm_num_groups="
                             f"{norm_num_groups} (--norm-num-groups) does not apply to them; leave it out")
        vae_dict = course.from_course(vae_dict)
        slots, unknown = parse_keys(vae_dict, OURS)
        config = infer_config(vae_dict, slots, groups)
        return Detection(course.NAME, vae_dict, slots, config, prefix, ignored,
                         implied={"scaling_factor": course.SCALING_FACTOR}, notes=[course.EPSILON_NOTE])

    parsed = {name: parse_keys(vae_dict, scheme) for name, scheme in SCHEMES.items()}
    # The keys all the schemes spell alike (conv_in, quant_conv, ...) say nothing; the level keys decide.
    scheme = max(parsed, key=lambda name: len(parsed[name][0]))
    slots, unknown = parsed[scheme]
    if not any(s.kind in ("down_res", "up_res") for s in slots.values()):
        raise UserError(
            "no VAE encoder/decoder keys found in this state dict "
            f"(it has {len(state_dict)} keys, e.g. {_first(list(state_dict), 3)})"
        )
    if unknown:
        raise UserError(
            f"{len(unknown)} key(s) are not part of a {scheme} VAE: {_first(sorted(unknown))}"
        )
    config = infer_config(vae_dict, slots, norm_num_groups)
    assumed = {} if norm_num_groups is not None else {"norm_num_groups": config["norm_num_groups"]}
    return Detection(scheme, vae_dict, slots, config, prefix, ignored, assumed)


def infer_config(state_dict: dict[str, torch.Tensor], slots: dict[str, Slot], norm_num_groups: int | None) -> dict:
    """Architecture (our config keys) from the shapes of the tensors behind `slots`."""
    by_slot = {slot: state_dict[key] for key, slot in slots.items()}

    def shape(kind: str, side: str, block: int = 0, layer: int = 0, part: str = "") -> tuple[int, ...]:
        slot = Slot(kind, side, block, layer, part, "weight")
        if slot not in by_slot:
            raise UserError(f"cannot infer the architecture: the checkpoint has no tensor for {slot}")
        return tuple(by_slot[slot].shape)

    num_levels = count_levels(by_slot)
    layers = 1 + max(s.layer for s in by_slot if s.kind == "down_res" and s.block == 0)
    channels = tuple(shape("down_res", "encoder", i, 0, "conv1")[0] for i in range(num_levels))
    groups = norm_num_groups or DEFAULT.norm_num_groups
    if norm_num_groups is None and any(c % groups for c in channels):
        raise UserError(
            f"block_out_channels {channels} are not all divisible by {groups}; the GroupNorm group "
            "count cannot be read from the weights, so pass norm_num_groups (or a config) explicitly"
        )
    return {
        "in_channels": shape("conv_in", "encoder")[1],
        "out_channels": shape("conv_out", "decoder")[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": shape("conv_in", "decoder")[1],
        "norm_num_groups": groups,
        "mid_block_add_attention": any(s.kind == "mid_attn" for s in by_slot),
        "use_quant_conv": any(s.kind == "quant_conv" for s in by_slot),
        "use_post_quant_conv": any(s.kind == "post_quant_conv" for s in by_slot),
    }
