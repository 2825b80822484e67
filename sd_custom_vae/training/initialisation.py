"""``--init resizing``: a new VAE whose first function is resizing, so that training starts where resizing ends.

At this initialisation the encoder computes each 8×8 block's mean colour into the first latent channels (area
downsampling) and the decoder enlarges those latents back (nearest neighbour). Every residual branch and attention
output starts at zero, so each block is the identity on the residual stream; the resamplers average (down) or copy
(up) every channel; the stems and heads embed and extract the image. Training then adds what resizing lacks:
detail, in the latent channels resizing leaves free and in the branches. The architecture is unchanged, an
``AutoencoderKL``'s; only the starting weights differ.

GroupNorm, in the heads, normalises each group of channels by the statistics of the whole image, which would erase
a block colour's absolute level. So each image channel ``x`` travels in four stream channels that GroupNorm cannot
disturb: ``x, -x, K, -K``. The pair ``x, -x`` keeps every group's mean at exactly 0; the constants ``±K`` hold its
variance at ``K²/2`` up to ``E[x²]/2``, a relative error of ``E[x²] / 2K²`` (under 0.5 % of ``x`` for ``K = 8``).
The head's SiLU runs on ``x + SHIFT`` and the head's conv reads ``(silu(x + SHIFT) - silu(-x + SHIFT)) / 2``,
which is ``x`` to about 1e-3: SiLU is linear far from 0, and its remaining curvature cancels between the pair.
(Without the shift, ``silu(x) - silu(-x)`` is ``x`` exactly, but each channel alone is then curved, and as
training moves the two apart the read-out bends: runs started that way ended 1.3 dB lower on 64-px crops.)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base.errors import UserError
from ..models import ScratchVAE
from ..network import AttentionBlock, Decoder, Downsample, Encoder, ResidualBlock, Upsample

CONSTANT = 8.0  # K: the constant stream channels that pin each group's variance
SHIFT = 10.0  # where the heads' SiLU runs for the image channels: silu(y) = y to 5e-4 for y ≥ 9
INITIAL_LOGVAR = -10.0  # the encoder's log-variance at the start: latent noise of std 0.007


def image_channels(channels: int) -> list[tuple[int, int, int, int]]:
    """The stream channels (x, -x, K, -K) that carry each of `channels` image channels."""
    return [(4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3) for c in range(channels)]


def check_resizing_start(config: dict) -> None:
    """Raise ``ValueError`` if the architecture `config` cannot start as resizing: every level must hold the
    image's channels four times, in GroupNorm groups of at least four."""
    narrowest, groups = min(config["block_out_channels"]), config["norm_num_groups"]
    need = 4 * max(config["in_channels"], config["out_channels"])
    if narrowest < need or narrowest // groups < 4 or (narrowest // groups) % 2:
        raise UserError(
            f"--init resizing needs every level at least {need} channels wide in GroupNorm groups of an even size "
            f"of at least 4; block_out_channels {tuple(config['block_out_channels'])} in {groups} groups has "
            f"{narrowest // groups} per group at {narrowest}: use fewer groups (--config with model.norm_num_groups)"
        )
    if config["latent_channels"] < config["in_channels"]:
        raise UserError(f"--init resizing needs at least {config['in_channels']} latent channels (one per image "
                         f"channel), got {config['latent_channels']}")


@torch.no_grad()
def start_as_resizing(vae: ScratchVAE) -> None:
    """Set `vae`'s weights so that it computes area downsampling and nearest-neighbour enlargement (see the
    module's docstring). Raises ``ValueError`` where the architecture cannot (``check_resizing_start``)."""
    check_resizing_start(vae.config)
    _embed(vae.encoder.conv_in, vae.config["in_channels"])
    _embed(vae.decoder.conv_in, vae.config["in_channels"])
    for network in (vae.encoder, vae.decoder):
        _identity_blocks(network)
    channels = vae.config["in_channels"]
    latent = vae.config["latent_channels"]
    _extract(vae.encoder.conv_norm_out, vae.encoder.conv_out, channels, outputs=range(channels),
             free=range(channels, latent))
    vae.encoder.conv_out.bias[latent:] = INITIAL_LOGVAR
    _extract(vae.decoder.conv_norm_out, vae.decoder.conv_out, channels, outputs=range(vae.config["out_channels"]))
    for conv in (vae.quant_conv, vae.post_quant_conv):
        if conv is not None:
            _identity_1x1(conv)


def _embed(conv: nn.Conv2d, channels: int) -> None:
    """A stem writing image (or latent) channel c as (x, -x, K, -K). Inputs beyond those (the latent channels
    resizing leaves free) keep their random weights into the stream's other channels, so that the decoder reads
    them from the first step (the head ignores those channels until training routes them); everything else
    starts at 0."""
    free = conv.weight[:, channels:].clone()
    conv.weight.zero_()
    conv.bias.zero_()
    other = _other_channels(conv.out_channels, channels)
    conv.weight[other, channels:] = free[other]
    centre = conv.kernel_size[0] // 2
    for c, (plus, minus, constant, negative) in enumerate(image_channels(channels)):
        conv.weight[plus, c, centre, centre] = 1.0
        conv.weight[minus, c, centre, centre] = -1.0
        conv.bias[constant], conv.bias[negative] = CONSTANT, -CONSTANT


def _other_channels(stream: int, channels: int) -> list[int]:
    """The stream channels that do not carry an image channel."""
    carried = {index for quad in image_channels(channels) for index in quad}
    return [index for index in range(stream) if index not in carried]


def _identity_1x1(conv: nn.Conv2d) -> None:
    """Channel j to channel j for the channels both sides have; new channels start at 0."""
    conv.weight.zero_()
    conv.bias.zero_()
    shared = min(conv.in_channels, conv.out_channels)
    conv.weight[range(shared), range(shared), 0, 0] = 1.0


def _identity_blocks(network: Encoder | Decoder) -> None:
    for module in network.modules():
        if isinstance(module, ResidualBlock):
            module.conv2.weight.zero_()  # the branch adds nothing until training makes it
            module.conv2.bias.zero_()
            if module.conv_shortcut is not None:
                _identity_1x1(module.conv_shortcut)
        elif isinstance(module, AttentionBlock):
            module.to_out[0].weight.zero_()
            module.to_out[0].bias.zero_()
        elif isinstance(module, Downsample):  # the stride-2 conv sees x[2i : 2i+3] after padding right: 2×2 mean
            _each_channel_to_itself(module.conv, taps=(slice(0, 2), slice(0, 2)), weight=0.25)
        elif isinstance(module, Upsample):  # a conv of the nearest-neighbour enlargement: its centre tap copies it
            _each_channel_to_itself(module.conv, taps=(1, 1), weight=1.0)


def _each_channel_to_itself(conv: nn.Conv2d, taps: tuple, weight: float) -> None:
    """`conv` reads channel j into channel j alone, with `weight` at the kernel positions `taps`."""
    conv.weight.zero_()
    conv.bias.zero_()
    every = range(conv.out_channels)
    conv.weight[(every, every, *taps)] = weight


def _extract(norm: nn.GroupNorm, conv: nn.Conv2d, channels: int, outputs: range, free: range = range(0)) -> None:
    """A head reading image channel c back from its (x, -x, K, -K) into output channel c, and nothing else; the
    `free` outputs (latent channels resizing leaves free) keep random weights from the stream's other channels,
    which start at 0: the encoder fills them as it learns."""
    group_size = norm.num_channels // norm.num_groups
    designed = [index for quad in image_channels(channels) for index in quad]
    # each group's standard deviation with every x at 0: that of its constants (the x are small beside K)
    variance = {}
    for _, _, constant, negative in image_channels(channels):
        for index in (constant, negative):
            group = index // group_size
            variance[group] = variance.get(group, 0.0) + CONSTANT**2 / group_size
    norm.weight[designed] = 0.0
    norm.bias[designed] = 0.0
    # Zero, not random, for the stream's other channels too (but into the free latent channels, which the decoder's
    # image does not read yet): they start at 0, and as the first steps write small values there, GroupNorm scales
    # each such group to unit variance: random weights here would pass that to the output at full strength and
    # wipe out the start. From zero these weights grow as the gradient asks.
    random = conv.weight.clone()
    conv.weight.zero_()
    conv.bias.zero_()
    other = _other_channels(conv.in_channels, channels)
    for row in free:
        conv.weight[row, other] = random[row, other]
    centre = conv.kernel_size[0] // 2
    # the channels both sides have: a decoder with more outputs than image channels leaves the extra ones at 0
    for c, (plus, minus, _, _) in zip(outputs, image_channels(channels), strict=False):
        std = math.sqrt(variance[plus // group_size])
        for index in (plus, minus):
            norm.weight[index], norm.bias[index] = std, SHIFT  # GroupNorm gives back ±x, shifted into SiLU's line
        conv.weight[c, plus, centre, centre], conv.weight[c, minus, centre, centre] = 0.5, -0.5
        conv.bias[c] = 0.0
