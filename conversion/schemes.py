"""The three naming schemes of an SD-family VAE, as tables of name templates.

Every parameter of the network is a *slot*: what kind of layer it belongs to, where it sits
(encoder or decoder, level, layer) and which part of the layer it is. Each scheme is a table
that says how it spells each kind of slot. Renaming from scheme A to scheme B is parsing a key
with A's table and formatting the slot with B's: both directions come from the same table, so
A → B → A gives back the same keys.

- ``scratch``: our own names (``ScratchVAE`` and ``CustomAutoencoderKL``).
- ``diffusers``: ``diffusers.AutoencoderKL``, including the pre-0.14 attention names.
- ``ldm``: the original CompVis/Stability single-file names; decoder levels are numbered from the
  top (``up.0`` is the last level run) and attention projections are 1×1 convolutions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch

RESIDUAL_PARTS = ("norm1", "conv1", "norm2", "conv2", "shortcut")
ATTENTION_PARTS = ("norm", "query", "key", "value", "out")
ATTENTION_PROJECTIONS = ("query", "key", "value", "out")


@dataclass(frozen=True, order=True)
class Slot:
    """One parameter of the network, independent of how any scheme spells it."""

    kind: str  # conv_in, down_res, downsample, mid_res, mid_attn, up_res, upsample, norm_out, conv_out, ...
    side: str  # "encoder", "decoder", or "" for the quant convs
    block: int = 0  # level, counted in the order the level runs
    layer: int = 0  # residual block within the level (or within the mid block)
    part: str = ""  # a name from RESIDUAL_PARTS / ATTENTION_PARTS, "" for single-layer slots
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

SCRATCH = Scheme(
    "scratch",
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

SCHEMES: dict[str, Scheme] = {s.name: s for s in (SCRATCH, DIFFUSERS, LDM)}
# Down and up levels have a fixed side, the rest say which one in the key.
_FIXED_SIDE = {"down_res": "encoder", "downsample": "encoder", "up_res": "decoder", "upsample": "decoder"}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown naming scheme {name!r}; expected one of {sorted(SCHEMES)}") from None


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


def expected_shapes(config: dict) -> dict[Slot, tuple[int, ...]]:
    """Every slot of the network described by `config` (our config keys), with its tensor shape in our scheme."""
    channels = list(config["block_out_channels"])
    layers = config["layers_per_block"]
    latent = config["latent_channels"]
    last = len(channels) - 1
    shapes: dict[Slot, tuple[int, ...]] = {}

    def conv(kind, side, c_in, c_out, size, block=0, layer=0, part=""):
        shapes[Slot(kind, side, block, layer, part, "weight")] = (c_out, c_in, size, size)
        shapes[Slot(kind, side, block, layer, part, "bias")] = (c_out,)

    def vector(kind, side, c, block=0, layer=0, part="", name="weight"):
        shapes[Slot(kind, side, block, layer, part, name)] = (c,)

    def norm(kind, side, c, block=0, layer=0, part=""):
        vector(kind, side, c, block, layer, part, "weight")
        vector(kind, side, c, block, layer, part, "bias")

    def residual(kind, side, block, layer, c_in, c_out):
        norm(kind, side, c_in, block, layer, "norm1")
        conv(kind, side, c_in, c_out, 3, block, layer, "conv1")
        norm(kind, side, c_out, block, layer, "norm2")
        conv(kind, side, c_out, c_out, 3, block, layer, "conv2")
        if c_in != c_out:
            conv(kind, side, c_in, c_out, 1, block, layer, "shortcut")

    def mid(side, c):
        residual("mid_res", side, 0, 0, c, c)
        residual("mid_res", side, 0, 1, c, c)
        if config.get("mid_block_add_attention", True):
            norm("mid_attn", side, c, part="norm")
            for part in ATTENTION_PROJECTIONS:
                shapes[Slot("mid_attn", side, 0, 0, part, "weight")] = (c, c)
                vector("mid_attn", side, c, part=part, name="bias")

    conv("conv_in", "encoder", config["in_channels"], channels[0], 3)
    c_in = channels[0]
    for i, c in enumerate(channels):
        for j in range(layers):
            residual("down_res", "encoder", i, j, c_in if j == 0 else c, c)
        if i < last:
            conv("downsample", "encoder", c, c, 3, block=i)
        c_in = c
    mid("encoder", channels[-1])
    norm("norm_out", "encoder", channels[-1])
    conv("conv_out", "encoder", channels[-1], 2 * latent, 3)

    if config.get("use_quant_conv", True):
        conv("quant_conv", "", 2 * latent, 2 * latent, 1)
    if config.get("use_post_quant_conv", True):
        conv("post_quant_conv", "", latent, latent, 1)

    reversed_channels = channels[::-1]
    conv("conv_in", "decoder", latent, reversed_channels[0], 3)
    mid("decoder", reversed_channels[0])
    c_in = reversed_channels[0]
    for i, c in enumerate(reversed_channels):
        for j in range(layers + 1):
            residual("up_res", "decoder", i, j, c_in if j == 0 else c, c)
        if i < last:
            conv("upsample", "decoder", c, c, 3, block=i)
        c_in = c
    norm("norm_out", "decoder", channels[0])
    conv("conv_out", "decoder", channels[0], config["out_channels"], 3)
    return shapes
