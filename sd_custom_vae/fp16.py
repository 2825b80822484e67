"""Half precision without NaN: rescale a VAE's activations, exactly, instead of fine-tuning it.

Some VAEs (SDXL's) have activations beyond float16's 65504, so pipelines upcast them to float32
(``force_upcast``). GroupNorm ignores the scale of its input, which leaves two kinds of freedom:

- the *residual stream* (what conv_in writes, every residual block adds to, a resampler or a
  shortcut conv carries to the next level) can be multiplied by any s > 0 between two convs that
  write into it: multiply those convs' weights and biases (and the attention output projections,
  the residual branches' last convs) by s and every GroupNorm reading the stream sees the same
  normalised values;
- a residual block's inner activation (conv1's output) feeds only a GroupNorm: conv1 can be scaled freely.

The scales are powers of two, so the rescaled weights are exact in any float format and float32
outputs stay the same but for GroupNorm's epsilon, which a scale is never allowed to make matter
(the smallest group variance it reads, times the scale squared, stays far above epsilon). The
activations are measured on real images (encoder) and on random latents of the spread a diffusion
model produces (decoder); each scale brings its part below 65504 / ``HEADROOM``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .network import AttentionBlock, Decoder, Downsample, Encoder, Head, Level, ResidualBlock, UNetMidBlock2D, Upsample

FP16_MAX = 65504.0
HEADROOM = 16.0  # the largest activation after the fix stays below FP16_MAX / HEADROOM
EPS_MARGIN = 1e4  # a GroupNorm's smallest group variance stays at least this many epsilons: eps cannot matter


@dataclass
class Fp16Report:
    """What ``make_fp16_safe`` found and did. Errors are of images in [-1, 1]."""

    max_activation_before: float
    max_activation_after: float
    fp16_error_before: float  # max |fp16 reconstruction - fp32 reconstruction| (inf: NaN or overflow)
    fp16_error_after: float
    fp32_change: float  # max |fp32 reconstruction after - before|: the fix's own (GroupNorm epsilon) effect
    scales: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        def error(value: float) -> str:
            return "NaN/overflow" if not math.isfinite(value) else f"{value:.2e}"

        changed = {k: v for k, v in self.scales.items() if v != 1.0}
        return (
            f"largest activation {self.max_activation_before:.4g} → {self.max_activation_after:.4g} "
            f"(float16 max {FP16_MAX:.0f})\n"
            f"float16 vs float32 reconstruction: {error(self.fp16_error_before)} → {error(self.fp16_error_after)}\n"
            f"float32 outputs changed by {self.fp32_change:.2e}; {len(changed)} stream/branch scale(s) set: "
            + ", ".join(f"{k} ×2^{int(math.log2(v))}" for k, v in list(changed.items())[:8])
            + (" ..." if len(changed) > 8 else "")
        )


def _ops(network: Encoder | Decoder) -> list[nn.Module]:
    """The network as the residual stream sees it: conv_in, residual and attention blocks, resamplers, the head."""
    ops = []
    for stage in network.stages():
        if isinstance(stage, Level):
            ops += stage.stages()
        elif isinstance(stage, UNetMidBlock2D):
            ops += [m for m in (stage.res1, stage.attn, stage.res2) if m is not None]
        else:
            ops.append(stage)
    return ops


@dataclass
class _Segment:
    """A stretch of the residual stream between two convs that can rescale it."""

    name: str
    maximum: float = 0.0  # the largest |value| the stream (or a branch adding to it) reaches here
    min_variance: float = math.inf  # the smallest group variance a GroupNorm reads from it
    scale: float = 1.0


class _Measure:
    """Forward hooks recording the largest activations and the smallest GroupNorm group variances."""

    def __init__(self):
        self.maximum: dict[nn.Module, float] = {}
        self.min_variance: dict[nn.Module, float] = {}
        self.handles = []

    def output(self, module: nn.Module) -> None:
        def hook(_, __, out):
            self.maximum[module] = max(self.maximum.get(module, 0.0), out.detach().abs().max().item())

        self.handles.append(module.register_forward_hook(hook))

    def norm_input(self, norm: nn.GroupNorm) -> None:
        def hook(_, args):
            x = args[0].detach().double()
            variance = x.reshape(x.shape[0], norm.num_groups, -1).var(-1, unbiased=False).min().item()
            self.min_variance[norm] = min(self.min_variance.get(norm, math.inf), variance)

        self.handles.append(norm.register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _plan(network: Encoder | Decoder, measure: _Measure, side: str) -> tuple[list[_Segment], list]:
    """The stream's segments and, per op, (segment in, segment out) indices."""
    segments = [_Segment(f"{side}.conv_in")]
    links = []
    for op in _ops(network):
        current = len(segments) - 1
        if op is network.conv_in:
            segments[0].maximum = measure.maximum[op]
            links.append((op, None, 0))
            continue
        starts_segment = isinstance(op, (Upsample, Downsample)) or (isinstance(op, ResidualBlock) and op.shortcut is not None)
        if starts_segment:
            segments.append(_Segment(f"{side} after {type(op).__name__} #{len(segments)}"))
        out = len(segments) - 1
        segment = segments[out]
        if isinstance(op, ResidualBlock):
            for module in (op, op.conv2, op.shortcut):
                if module is not None:
                    segment.maximum = max(segment.maximum, measure.maximum[module])
            segments[current].min_variance = min(segments[current].min_variance, measure.min_variance[op.norm1])
        elif isinstance(op, AttentionBlock):
            segment.maximum = max(segment.maximum, measure.maximum[op], measure.maximum[op.out])
            segment.min_variance = min(segment.min_variance, measure.min_variance[op.norm])
        elif isinstance(op, (Upsample, Downsample)):
            segment.maximum = max(segment.maximum, measure.maximum[op])
        elif isinstance(op, Head):
            segment.min_variance = min(segment.min_variance, measure.min_variance[op.parts[0]])
        links.append((op, current, out))
    return segments, links


def _scale_for(maximum: float, min_variance: float, eps: float) -> float:
    """The largest power of two ≤ 1 that brings `maximum` under the target, if epsilon allows it."""
    target = FP16_MAX / HEADROOM
    scale = 1.0 if maximum <= target else 2.0 ** math.floor(math.log2(target / maximum))
    # GroupNorm reads the scaled values: their variance must stay far above its epsilon
    floor = math.sqrt(EPS_MARGIN * eps / min_variance) if min_variance > 0 and math.isfinite(min_variance) else 0.0
    while scale < 1.0 and scale < floor:
        scale *= 2.0
    return scale


@torch.no_grad()
def _multiply(module: nn.Module, weight: float, bias: float) -> None:
    module.weight.mul_(weight)
    if module.bias is not None:
        module.bias.mul_(bias)


def _apply(segments: list[_Segment], links: list, branch_scales: dict) -> None:
    for op, source, target in links:
        s_out = segments[target].scale
        s_in = 1.0 if source is None else segments[source].scale
        if source is None:  # conv_in writes the stream
            _multiply(op, s_out, s_out)
        elif isinstance(op, ResidualBlock):
            _multiply(op.conv1, branch_scales[op], branch_scales[op])
            _multiply(op.conv2, s_out, s_out)
            if op.shortcut is not None:
                _multiply(op.shortcut, s_out / s_in, s_out)
        elif isinstance(op, AttentionBlock):
            _multiply(op.out, s_out, s_out)
        elif isinstance(op, (Upsample, Downsample)):
            _multiply(op.conv, s_out / s_in, s_out)


def _hook_everything(networks: list[Encoder | Decoder], measure: _Measure) -> None:
    for network in networks:
        for op in _ops(network):
            if not isinstance(op, Head):  # a Head is a fresh wrapper on each call: its parts are hooked instead
                measure.output(op)
            if isinstance(op, ResidualBlock):
                for module in (op.conv1, op.conv2, op.shortcut):
                    if module is not None:
                        measure.output(module)
                measure.norm_input(op.norm1)
                measure.norm_input(op.norm2)
            elif isinstance(op, AttentionBlock):
                measure.output(op.out)
                measure.norm_input(op.norm)
            elif isinstance(op, Head):
                measure.norm_input(op.parts[0])


def _reconstruct(vae, images: torch.Tensor, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The decoder's output on `latents` and the round trip of `images`, in `dtype` (NaN where it overflowed).
    A copy runs in `dtype`: casting `vae` there and back would round its float32 weights."""
    model = vae if dtype == torch.float32 else nn.Module.to(copy.deepcopy(vae), dtype)  # (ModelMixin.to warns)
    with torch.no_grad():
        decoded = model.decode(latents.to(dtype)).sample.float()
        round_trip = model.decode(model.encode(images.to(dtype)).latent_dist.mode()).sample.float()
    return torch.cat([decoded.flatten(), round_trip.flatten()])


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    difference = (a - b).abs().max().item()
    return difference if math.isfinite(difference) else math.inf


def make_fp16_safe(vae, images: torch.Tensor, latents: torch.Tensor) -> Fp16Report:
    """Rescale `vae` (a float32 ``CustomAutoencoderKL``, changed in place) so that float16 does not overflow on
    `images` (N, 3, H, W in [-1, 1]) and decoder `latents`; sets ``force_upcast`` False. See the module docstring."""
    if vae.dtype != torch.float32:
        raise ValueError(f"make_fp16_safe measures the VAE in float32; it is {vae.dtype}: call .float() first")
    vae.eval()
    reference = _reconstruct(vae, images, latents, torch.float32)
    half_before = _reconstruct(vae, images, latents, torch.float16)

    measure = _Measure()
    _hook_everything([vae.encoder, vae.decoder], measure)
    try:
        with torch.no_grad():
            vae.decoder(vae.post_quant_conv(latents) if vae.post_quant_conv is not None else latents)
            vae.encoder(images)
    finally:
        measure.remove()
    before = max(measure.maximum.values())
    eps = vae.encoder.norm_out.eps

    scales: dict[str, float] = {}
    for side, network in (("encoder", vae.encoder), ("decoder", vae.decoder)):
        segments, links = _plan(network, measure, side)
        for segment in segments:
            segment.scale = _scale_for(segment.maximum, segment.min_variance, eps)
            scales[segment.name] = segment.scale
        branch_scales = {
            op: _scale_for(measure.maximum[op.conv1], measure.min_variance[op.norm2], eps)
            for op, _, _ in links if isinstance(op, ResidualBlock)
        }
        scales.update({f"{side} residual branch #{i}": s for i, s in enumerate(branch_scales.values())})
        _apply(segments, links, branch_scales)

    after_measure = _Measure()
    _hook_everything([vae.encoder, vae.decoder], after_measure)
    try:
        fixed = _reconstruct(vae, images, latents, torch.float32)
    finally:
        after_measure.remove()
    half_after = _reconstruct(vae, images, latents, torch.float16)
    vae.register_to_config(force_upcast=False)
    return Fp16Report(
        max_activation_before=before,
        max_activation_after=max(after_measure.maximum.values()),
        fp16_error_before=_error(half_before, reference),
        fp16_error_after=_error(half_after, fixed),
        fp32_change=_error(fixed, reference),
        scales=scales,
    )


def calibration_images(resolution: int = 256, count: int = 8) -> torch.Tensor:
    """Crops of the built-in photos, training and validation alike: what the encoder is measured on by default."""
    from .data import evaluation_crops, prepare_images
    from .image_sources import builtin_source, take

    return evaluation_crops(prepare_images(take(builtin_source()), resolution, None), resolution, 1)[:count]


def calibration_latents(vae, count: int = 4, side: int = 32, seed: int = 0) -> torch.Tensor:
    """Latents of the spread a diffusion model hands the decoder: N(0, 1) in the UNet's scale, unscaled."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, vae.config.latent_channels, side, side, generator=generator)
    return z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
