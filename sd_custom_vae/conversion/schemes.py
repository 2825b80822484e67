"""The naming schemes of an SD-family VAE that spell keys by templates.

Every parameter of the network is a *slot*: what kind of layer it belongs to, where it sits
(encoder or decoder, level, layer) and which part of the layer it is. Each scheme is a table
that says how it spells each kind of slot. Renaming from scheme A to scheme B is parsing a key
with A's table and formatting the slot with B's: both directions come from the same table, so
A → B → A gives back the same keys.

- ``diffusers``: ``diffusers.AutoencoderKL``'s names, which ``ScratchVAE`` and ``CustomAutoencoderKL``
  carry too; the pre-0.14 attention names are read as well.
- ``ldm``: the original CompVis/Stability single-file names; decoder levels are numbered from the
  top (``up.0`` is the last level run) and attention projections are 1×1 convolutions.
- ``sd-custom-vae-0.2``: the names this project's models carried up to version 0.2, read so that their
  files and training checkpoints keep loading; nothing is written in it.

The course's layout (``nn.Sequential`` indices, a fused ``in_proj``) is not a template scheme: ``course.py``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..base.errors import UserError

# the one definition of the network's structure, and what a config that leaves an architecture key out means
from ..network import Architecture, VAEModules

# The parts of a layer, by scheme-neutral names that each scheme spells its own way.
RESIDUAL_PARTS = ("norm1", "conv1", "norm2", "conv2", "shortcut")
ATTENTION_PARTS = ("norm", "query", "key", "value", "out")
ATTENTION_PROJECTIONS = ("query", "key", "value", "out")


@dataclass(frozen=True, order=True)
class Slot:
    """One parameter of the network, independent of how any scheme spells it.

    Attributes:
        kind: ``conv_in``, ``down_res``, ``downsample``, ``mid_res``, ``mid_attn``, ``up_res``, ``upsample``,
            ``norm_out``, ``conv_out`` ...
        side: ``"encoder"``, ``"decoder"``, or ``""`` for the quant convs.
        block: The level, counted in the order the levels run.
        layer: The residual block within the level (or within the mid block).
        part: A name from ``RESIDUAL_PARTS`` or ``ATTENTION_PARTS``; ``""`` for single-layer slots.
        param: ``"weight"`` or ``"bias"``.
    """

    kind: str
    side: str
    block: int = 0
    layer: int = 0
    part: str = ""
    param: str = "weight"

    @property
    def is_attention_projection(self) -> bool:
        return self.kind == "mid_attn" and self.part in ATTENTION_PROJECTIONS and self.param == "weight"


@dataclass(frozen=True)
class Scheme:
    name: str
    templates: dict[str, str]  # slot kind → key template (the ".weight"/".bias" suffix is added)
    parts: dict[str, str]  # our part name → this scheme's
    aliases: dict[str, str]  # extra part names accepted on input → our part name
    attention_as_conv: bool = False  # store attention projections as (C, C, 1, 1) convolution weights


_SHARED = {
    "conv_in": "{side}.conv_in",
    "conv_out": "{side}.conv_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}

LEGACY = Scheme(
    "sd-custom-vae-0.2",
    {
        **_SHARED,
        "down_res": "encoder.down.{block}.res_blocks.{layer}.{part}",
        "downsample": "encoder.down.{block}.downsample.conv",
        "mid_res": "{side}.mid.res{layer1}.{part}",
        "mid_attn": "{side}.mid.attn.{part}",
        "up_res": "decoder.up.{block}.res_blocks.{layer}.{part}",
        "upsample": "decoder.up.{block}.upsample.conv",
        "norm_out": "{side}.norm_out",
    },
    parts={p: p for p in RESIDUAL_PARTS + ATTENTION_PARTS},
    aliases={},
)

DIFFUSERS = Scheme(
    "diffusers",
    {
        **_SHARED,
        "down_res": "encoder.down_blocks.{block}.resnets.{layer}.{part}",
        "downsample": "encoder.down_blocks.{block}.downsamplers.0.conv",
        "mid_res": "{side}.mid_block.resnets.{layer}.{part}",
        "mid_attn": "{side}.mid_block.attentions.0.{part}",
        "up_res": "decoder.up_blocks.{block}.resnets.{layer}.{part}",
        "upsample": "decoder.up_blocks.{block}.upsamplers.0.conv",
        "norm_out": "{side}.conv_norm_out",
    },
    parts={
        **{p: p for p in RESIDUAL_PARTS},
        "shortcut": "conv_shortcut",
        "norm": "group_norm",
        "query": "to_q",
        "key": "to_k",
        "value": "to_v",
        "out": "to_out.0",
    },
    # diffusers < 0.14 named the attention projections this way; from_pretrained still accepts them.
    aliases={"query": "query", "key": "key", "value": "value", "proj_attn": "out"},
)

LDM = Scheme(
    "ldm",
    {
        **_SHARED,
        "down_res": "encoder.down.{block}.block.{layer}.{part}",
        "downsample": "encoder.down.{block}.downsample.conv",
        "mid_res": "{side}.mid.block_{layer1}.{part}",
        "mid_attn": "{side}.mid.attn_1.{part}",
        "up_res": "decoder.up.{rblock}.block.{layer}.{part}",
        "upsample": "decoder.up.{rblock}.upsample.conv",
        "norm_out": "{side}.norm_out",
    },
    parts={
        **{p: p for p in RESIDUAL_PARTS},
        "shortcut": "nin_shortcut",
        "norm": "norm",
        "query": "q",
        "key": "k",
        "value": "v",
        "out": "proj_out",
    },
    aliases={},
    attention_as_conv=True,
)

SCHEMES: dict[str, Scheme] = {s.name: s for s in (DIFFUSERS, LDM, LEGACY)}
OURS = DIFFUSERS  # the names our models carry
# Down and up levels have a fixed side, the rest say which one in the key.
_FIXED_SIDE = {"down_res": "encoder", "downsample": "encoder", "up_res": "decoder", "upsample": "decoder"}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise UserError(f"unknown naming scheme {name!r}; expected one of {sorted(SCHEMES)}") from None


def _part_names(scheme: Scheme, kind: str) -> dict[str, str]:
    """This scheme's spelling of each part of a layer of `kind` → our part name (aliases included)."""
    ours = ATTENTION_PARTS if kind == "mid_attn" else RESIDUAL_PARTS
    names = {scheme.parts[p]: p for p in ours}
    names.update({alias: p for alias, p in scheme.aliases.items() if p in ours})
    return names


def _template_regex(scheme: Scheme, kind: str) -> re.Pattern:
    pattern = re.escape(scheme.templates[kind])
    # longest spelling first, so "to_out.0" is not cut short by a shorter alternative
    parts = "|".join(re.escape(n) for n in sorted(_part_names(scheme, kind), key=len, reverse=True))
    pattern = (
        pattern.replace(r"\{side\}", "(?P<side>encoder|decoder)")
        .replace(r"\{block\}", r"(?P<block>\d+)")
        .replace(r"\{rblock\}", r"(?P<rblock>\d+)")
        .replace(r"\{layer\}", r"(?P<layer>\d+)")
        .replace(r"\{layer1\}", r"(?P<layer1>\d+)")
        .replace(r"\{part\}", f"(?P<part>{parts})")
    )
    return re.compile(pattern + r"\.(?P<param>weight|bias)")


_REGEX_CACHE: dict[tuple[str, str], re.Pattern] = {}


def _regexes(scheme: Scheme) -> list[tuple[str, re.Pattern]]:
    out = []
    for kind in scheme.templates:
        key = (scheme.name, kind)
        if key not in _REGEX_CACHE:
            _REGEX_CACHE[key] = _template_regex(scheme, kind)
        out.append((kind, _REGEX_CACHE[key]))
    return out


def parse_keys(keys: Iterable[str], scheme: Scheme | str) -> tuple[dict[str, Slot], list[str]]:
    """Parse keys written in `scheme` into slots. Returns (key → slot, keys that did not parse)."""
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    raw: dict[str, tuple[str, dict[str, str]]] = {}
    unknown = []
    for key in keys:
        for kind, regex in _regexes(scheme):
            match = regex.fullmatch(key)
            if match:
                raw[key] = (kind, match.groupdict())
                break
        else:
            unknown.append(key)

    # "rblock" numbers decoder levels from the top; turning it around needs the number of levels.
    rblocks = [int(g["rblock"]) for _, g in raw.values() if g.get("rblock") is not None]
    num_levels = max(rblocks) + 1 if rblocks else 0
    slots = {}
    for key, (kind, groups) in raw.items():
        if groups.get("rblock") is not None:
            block = num_levels - 1 - int(groups["rblock"])
        else:
            block = int(groups.get("block") or 0)
        layer = int(groups["layer1"]) - 1 if groups.get("layer1") else int(groups.get("layer") or 0)
        part = _part_names(scheme, kind)[groups["part"]] if groups.get("part") else ""
        side = groups.get("side") or _FIXED_SIDE.get(kind, "")
        slots[key] = Slot(kind, side, block, layer, part, groups["param"])
    return slots, unknown


def format_slot(slot: Slot, scheme: Scheme | str, num_levels: int) -> str:
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    name = scheme.templates[slot.kind].format(
        side=slot.side,
        block=slot.block,
        rblock=num_levels - 1 - slot.block,
        layer=slot.layer,
        layer1=slot.layer + 1,
        part=scheme.parts.get(slot.part, slot.part),
    )
    return f"{name}.{slot.param}"


def adapt_tensor(slot: Slot, tensor: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Give an attention projection weight the shape `scheme` stores it in (linear or 1×1 conv)."""
    if not slot.is_attention_projection:
        return tensor
    if scheme.attention_as_conv:
        return tensor.reshape(*tensor.shape[:2], 1, 1) if tensor.ndim == 2 else tensor
    return tensor.reshape(tensor.shape[:2]) if tensor.ndim > 2 else tensor


def count_levels(slots: Iterable[Slot]) -> int:
    blocks = [s.block for s in slots if s.kind in ("down_res", "up_res")]
    return max(blocks) + 1 if blocks else 0


class _Network(nn.Module, VAEModules):
    """The bare modules of a VAE, to read their names and shapes."""


def expected_tensors(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the network `config` (its architecture keys) describes, under our names, with its shape, in
    the network's order: read off the network itself, built on the meta device (no memory, no arithmetic).

    Args:
        config: A config; its architecture keys are read, the defaults taken for those it leaves out.
    """
    architecture = Architecture.from_config(config)
    with torch.device("meta"):
        network = _Network()
        network.build_network(architecture)
    return {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}


def expected_shapes(config: dict) -> dict[Slot, tuple[int, ...]]:
    """`expected_tensors`, keyed by slot.

    Args:
        config: As ``expected_tensors`` takes it.
    """
    tensors = expected_tensors(config)
    slots, unknown = parse_keys(tensors, OURS)
    assert not unknown, f"the {OURS.name} scheme does not spell {unknown}"  # the scheme table must know every module
    return {slot: tensors[key] for key, slot in slots.items()}
