"""The course's layout: the VAE of the best-known "Stable Diffusion from scratch in PyTorch" code
(hkproj/pytorch-stable-diffusion), which the course this project grew from builds.

There the encoder and the decoder are each an ``nn.Sequential`` (``VAE_Encoder``, ``VAE_Decoder``), so a
checkpoint of a module holding them as ``.encoder`` and ``.decoder`` names its tensors by position:
``encoder.1.groupnorm_1.weight`` is the first residual block of the first level. Residual blocks name their
parts ``groupnorm_1/conv_1/groupnorm_2/conv_2/residual_layer``; the attention block has a ``groupnorm`` and one
fused ``attention.in_proj`` (query, key and value stacked) with an ``attention.out_proj``. The quant convs sit
inside the sequences (``encoder.18``, ``decoder.0``). Its architecture is fixed: SD 1.x's.

Two things are not in the weights. The course multiplies the encoder's latent by 0.18215 and divides the
decoder's input by it, where diffusers keeps the latent unscaled and records ``scaling_factor``: the same
weights, read as ``scaling_factor`` 0.18215. And its GroupNorms keep torch's default epsilon (1e-5), diffusers'
and LDM's 1e-6: the same weights compute slightly different numbers (``EPSILON_NOTE``).
"""

from __future__ import annotations

import re

import torch

from ..base.errors import UserError
from ..network import GROUP_NORM_EPS
from ..network.config import LATENT_SPACE
from .schemes import expected_tensors

NAME = "course"
# The course's modules are built for SD 1.x's VAE and nothing else.
ARCHITECTURE = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2,
    "latent_channels": 4, "norm_num_groups": 32, "mid_block_add_attention": True, "use_quant_conv": True,
    "use_post_quant_conv": True,
}
# SD's, hard-coded by the course: multiplied into the encoder's output, divided out at the decoder's input
SCALING_FACTOR = LATENT_SPACE.scaling_factor
GROUP_NORM_EPS_COURSE = 1e-5  # nn.GroupNorm's default, which the course keeps
EPSILON_NOTE = (
    f"the course's GroupNorms use epsilon {GROUP_NORM_EPS_COURSE:g}, diffusers' {GROUP_NORM_EPS:g}: the same "
    "weights give slightly different numbers (up to about 1e-4 in a decoded image on SD-size weights; "
    "docs/conversion.md)"
)
COURSE_RESIDUAL_PARTS = {"groupnorm_1": "norm1", "conv_1": "conv1", "groupnorm_2": "norm2", "conv_2": "conv2",
                  "residual_layer": "conv_shortcut"}
_KEY = re.compile(r"^(encoder|decoder)\.(\d+)\.")


def _sequence(side: str, config: dict) -> list[tuple[str, str | None]]:
    """The course's ``nn.Sequential`` for `side`: (kind, our module path or None for a layer without weights)."""
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    mid = [("residual", f"{side}.mid_block.resnets.0"), ("attention", f"{side}.mid_block.attentions.0"),
           ("residual", f"{side}.mid_block.resnets.1")]
    head = [("plain", f"{side}.conv_norm_out"), ("plain", None), ("plain", f"{side}.conv_out")]  # norm, SiLU, conv
    if side == "encoder":
        modules = [("plain", "encoder.conv_in")]
        for level in range(levels):
            modules += [("residual", f"encoder.down_blocks.{level}.resnets.{j}") for j in range(layers)]
            if level < levels - 1:  # the course pads right and bottom before each stride-2 conv, as SD does
                modules.append(("plain", f"encoder.down_blocks.{level}.downsamplers.0.conv"))
        return modules + mid + head + [("plain", "quant_conv")]
    modules = [("plain", "post_quant_conv"), ("plain", "decoder.conv_in"), *mid]
    for level in range(levels):
        modules += [("residual", f"decoder.up_blocks.{level}.resnets.{j}") for j in range(layers + 1)]
        if level < levels - 1:  # nn.Upsample, then the conv
            modules += [("plain", None), ("plain", f"decoder.up_blocks.{level}.upsamplers.0.conv")]
    return modules + head


def _key_pairs(config: dict) -> list[tuple[str, str | tuple[str, str, str]]]:
    """(course key, our key) for every tensor; the fused in_proj maps to our (to_q, to_k, to_v) keys."""
    pairs = []
    for side in ("encoder", "decoder"):
        for index, (kind, ours) in enumerate(_sequence(side, config)):
            if ours is None:
                continue
            for param in ("weight", "bias"):
                course = f"{side}.{index}"
                if kind == "plain":
                    pairs.append((f"{course}.{param}", f"{ours}.{param}"))
                elif kind == "residual":
                    pairs += [(f"{course}.{theirs}.{param}", f"{ours}.{part}.{param}")
                              for theirs, part in COURSE_RESIDUAL_PARTS.items()]
                else:
                    pairs += [
                        (f"{course}.groupnorm.{param}", f"{ours}.group_norm.{param}"),
                        (f"{course}.attention.in_proj.{param}",
                         tuple(f"{ours}.{p}.{param}" for p in ("to_q", "to_k", "to_v"))),
                        (f"{course}.attention.out_proj.{param}", f"{ours}.to_out.0.{param}"),
                    ]
    return pairs


def is_course(keys) -> bool:
    """Whether `keys` name tensors by position in the course's encoder and decoder sequences."""
    keys = list(keys)
    return bool(keys) and sum(bool(_KEY.match(k)) for k in keys) > len(keys) // 2


def from_course(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """The course's tensors under our names, the fused in_proj split into to_q/to_k/to_v (views, no copies).

    A residual block whose channels stay has no ``residual_layer`` tensors (an ``nn.Identity``), as ours has no
    ``conv_shortcut``. Keys the layout does not know, and keys it needs that are absent, are an error naming them.
    """
    needed = set(expected_tensors(ARCHITECTURE))
    renamed, known, missing = {}, set(), []
    for course, ours in _key_pairs(ARCHITECTURE):
        known.add(course)
        if course not in state_dict:
            if any(key in needed for key in (ours if isinstance(ours, tuple) else (ours,))):
                missing.append(course)
            continue
        tensor = state_dict[course]
        if isinstance(ours, tuple):
            if tensor.shape[0] % 3:
                raise UserError(f"{source}: {course!r} has shape {tuple(tensor.shape)}: "
                                 "not query, key and value stacked")
            renamed.update(zip(ours, tensor.chunk(3, dim=0), strict=True))
        else:
            renamed[ours] = tensor
    unknown = sorted(set(state_dict) - known)
    for keys, what in ((unknown, "are not part of"), (missing, "are missing from")):
        if keys:
            shown = ", ".join(repr(k) for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            raise UserError(f"{source}: {len(keys)} key(s) {what} the course's VAE_Encoder/VAE_Decoder layout: "
                             f"{shown}")
    return renamed


def check_holds(config: dict) -> None:
    """Refuse, in one line naming what differs, a VAE the course's fixed architecture cannot hold."""
    differences = [
        f"{key} {tuple(config[key]) if isinstance(config[key], list) else config[key]!r} (the course has {value!r})"
        for key, value in ARCHITECTURE.items()
        if (tuple(config[key]) if isinstance(config[key], list) else config[key]) != value
    ]
    if differences:
        raise UserError(
            "the course's VAE_Encoder/VAE_Decoder have SD 1.x's fixed architecture and cannot hold this VAE: "
            + "; ".join(differences)
        )


def to_course(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """Our (validated, complete) tensors in the course's layout, loadable with ``strict=True``."""
    check_holds(config)
    out = {}
    for course, ours in _key_pairs(config):
        if isinstance(ours, tuple):
            out[course] = torch.cat([state_dict[key] for key in ours])
        elif ours in state_dict:
            out[course] = state_dict[ours]
    return out


def latent_scale_note(config: dict) -> str | None:
    """A note when the VAE's latents are scaled otherwise than the course's code scales them."""
    scaling, shift = config.get("scaling_factor", SCALING_FACTOR), config.get("shift_factor")
    if scaling == SCALING_FACTOR and shift is None:
        return None
    return (
        f"the course's code scales latents by {SCALING_FACTOR} (no shift); this VAE's scaling_factor is {scaling:g}"
        + (f" and shift_factor {shift:g}" if shift is not None else "")
        + ": change that constant in VAE_Encoder.forward and VAE_Decoder.forward"
    )
