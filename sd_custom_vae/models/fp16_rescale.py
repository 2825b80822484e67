"""Half precision without NaN: rescale a VAE's activations, exactly, instead of fine-tuning it.

Some VAEs (SDXL's) have activations beyond float16's 65504, so pipelines upcast them to float32
(``force_upcast``). GroupNorm ignores the scale of its input, which leaves two kinds of freedom
(each block states its part in ``stream_roles()``, ``network/roles.py``):

- the *residual stream* (what conv_in writes, every residual block adds to, a resampler or a
  shortcut conv carries to the next level) can be multiplied by any s > 0 between two layers that
  write into it: multiply those layers' weights and biases (the residual branches' last convs, the
  attention output projections) by s and every GroupNorm reading the stream sees the same
  normalised values;
- a residual block's inner activation (conv1's output) feeds only a GroupNorm: conv1 can be scaled freely.

The scales are powers of two, so the rescaled weights are exact in any float format and float32
outputs stay the same but for GroupNorm's epsilon, which a scale is never allowed to make matter
(the smallest group variance it reads, times the scale squared, stays far above epsilon). The
activations are measured in float32 on real images (encoder) and on random latents of the spread a
diffusion model produces (decoder); each scale brings its part below 65504 / ``HEADROOM``.

The result is then run in float16 (``float16.py``): on a GPU for real, on a CPU, which has no fast float16
kernels, emulated on float32 ones. GroupNorm and attention work per sample, so each input's activations do
not depend on the others in its batch: the float16 runs take only the inputs that reach some layer's largest
activation, where float16 overflows first if it overflows anywhere.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..base.errors import UserError
from ..network import Decoder, Encoder, StreamRole
from .half_precision import FP16_MAX, in_float16

HEADROOM = 16.0  # the largest activation after the fix stays below FP16_MAX / HEADROOM
# A GroupNorm's smallest group variance stays at least this many epsilons once scaled, so epsilon moves each
# normalised value by at most 1/(2·EPS_MARGIN) = 5e-7 relative: 20 GroupNorms in a row stay under 1e-5. (10^4,
# as before, let a scale change float32 outputs by 1e-4: the fix must be exact, not nearly.)
EPS_MARGIN = 2.0**20


@dataclass
class Fp16Report:
    """What ``make_fp16_safe`` found and did. Errors are of images in [-1, 1]."""

    max_activation_before: float
    max_activation_after: float
    fp16_error_before: float  # max |fp16 reconstruction - fp32 reconstruction| (inf: NaN or overflow)
    fp16_error_after: float
    fp32_change: float  # max |fp32 reconstruction after - before|: the fix's own (GroupNorm epsilon) effect
    scales: dict[str, float] = field(default_factory=dict)
    checked_on: str = ""  # how float16 was run, on which inputs
    overflow: str = ""  # where float16 still overflows after the fix ("": nowhere, the VAE is float16-safe)

    @property
    def fp16_safe(self) -> bool:
        return math.isfinite(self.fp16_error_after)

    def __str__(self) -> str:
        def error(value: float) -> str:
            return "NaN/overflow" if not math.isfinite(value) else f"{value:.2e}"

        changed = {k: v for k, v in self.scales.items() if v != 1.0}
        return (
            f"largest activation {self.max_activation_before:.4g} → {self.max_activation_after:.4g} "
            f"(float16 max {FP16_MAX:.0f})\n"
            f"float16 vs float32 reconstruction: {error(self.fp16_error_before)} → {error(self.fp16_error_after)} "
            f"({self.checked_on})\n"
            f"float32 outputs changed by {self.fp32_change:.2e}; {len(changed)} stream/branch scale(s) set: "
            + ", ".join(f"{k} ×2^{int(math.log2(v))}" for k, v in list(changed.items())[:8])
            + (" ..." if len(changed) > 8 else "")
            + ("" if self.fp16_safe else f"\nfloat16 still overflows ({self.overflow}): no power-of-two rescale of the "
               "residual streams can fix it; force_upcast stays true")
        )


def _roles(network: Encoder | Decoder) -> list[StreamRole]:
    return [role for block in network.blocks() for role in block.stream_roles()]


class _Measure:
    """Forward hooks recording, per layer, the largest |activation| (and which input of the batch reached it)
    and the smallest GroupNorm group variance. `unscaled`: layers outside the streams, which no scale changes
    (the heads' convs, quant_conv, post_quant_conv): only their largest outputs are recorded."""

    def __init__(self, networks: list[Encoder | Decoder], unscaled: list[nn.Module]):
        self.maximum: dict[nn.Module, float] = {}
        self.worst_input: dict[nn.Module, int] = {}
        self.min_variance: dict[nn.Module, float] = {}
        self.handles = []
        for module in unscaled:
            self._output(module)
        for network in networks:
            for role in _roles(network):
                for module in (*role.measured, *role.branch[:1]) if role.branch else role.measured:
                    self._output(module)
                for norm in (*role.reads, *role.branch[1:]) if role.branch else role.reads:
                    self._norm_input(norm)

    def _output(self, module: nn.Module) -> None:
        def hook(_, __, out):
            per_input = out.detach().abs().flatten(1).amax(1).float().nan_to_num(nan=math.inf)  # NaN counts as largest
            worst = int(per_input.argmax())
            if per_input[worst].item() > self.maximum.get(module, -1.0):
                self.maximum[module], self.worst_input[module] = per_input[worst].item(), worst

        self.handles.append(module.register_forward_hook(hook))

    def _norm_input(self, norm: nn.GroupNorm) -> None:
        def hook(_, args):
            # float32 is precise enough here (torch accumulates it in double on a CPU): it is compared with 10^6 eps
            x = args[0].detach().float()
            variance = x.reshape(x.shape[0], norm.num_groups, -1).var(-1, unbiased=False).min().item()
            if math.isnan(variance):  # no variance at all (Python's min would drop a NaN): never scaled down
                variance = 0.0
            self.min_variance[norm] = min(self.min_variance.get(norm, math.inf), variance)

        self.handles.append(norm.register_forward_pre_hook(hook))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass
class _Segment:
    """A stretch of the residual stream between two layers that can rescale it."""

    name: str
    maximum: float = 0.0  # the largest |value| the stream (or a branch adding to it) reaches here
    worst_input: int = 0  # the input of the measured batch that reaches it
    min_variance: float = math.inf  # the smallest group variance a GroupNorm reads from it
    scale: float = 1.0


def _plan(network: Encoder | Decoder, measure: _Measure, names: dict[nn.Module, str]) -> tuple[list[_Segment], list]:
    """The stream's segments and, per role, (role, incoming segment or None, outgoing segment)."""
    segments: list[_Segment] = []
    links = []
    for role in _roles(network):
        first = not segments
        if first or role.starts_stream:
            writer = (role.carries or role.writes)[0]
            segments.append(_Segment(f"stream from {names[writer]}"))
        out = len(segments) - 1
        incoming = None if first else (out - 1 if role.starts_stream else out)
        for module in role.measured:
            if measure.maximum[module] > segments[out].maximum:
                segments[out].maximum, segments[out].worst_input = measure.maximum[module], measure.worst_input[module]
        for norm in role.reads:
            segments[incoming].min_variance = min(segments[incoming].min_variance, measure.min_variance[norm])
        links.append((role, incoming, out))
    return segments, links


def _scale_for(maximum: float, min_variance: float, eps: float) -> float:
    """The largest power of two ≤ 1 that brings `maximum` under the target, if epsilon allows it."""
    target = FP16_MAX / HEADROOM
    if not math.isfinite(maximum) or maximum <= target:  # within range, or broken in float32 already
        return 1.0
    scale = 2.0 ** math.floor(math.log2(target / maximum))
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


def _apply(segments: list[_Segment], links: list, branch_scales: dict[nn.Module, float]) -> None:
    for role, incoming, out in links:
        s_out = segments[out].scale
        s_in = 1.0 if incoming is None else segments[incoming].scale
        for module in role.writes:
            _multiply(module, s_out, s_out)
        for module in role.carries:
            _multiply(module, s_out / s_in, s_out)
        if role.branch:
            scale = branch_scales[role.branch[0]]
            _multiply(role.branch[0], scale, scale)


def _round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()).sample.float().cpu()


def _decoded(vae, latents: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(latents.to(vae.device, vae.dtype)).sample.float().cpu()


def _error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max |a - b| over the pairs; inf as soon as one pair has NaN or inf (Python's max would drop a NaN)."""
    largest = 0.0
    for x, y in zip(a, b, strict=True):
        difference = (x - y).abs().max().item()
        if not math.isfinite(difference):
            return math.inf
        largest = max(largest, difference)
    return largest


def _first_overflow(model: nn.Module) -> list[str]:
    """Hooks on `model`'s layers; the list they fill holds the name of the first layer whose output is NaN or inf
    (an overflow in a residual sum between layers shows in the next layer's output)."""
    found: list[str] = []

    def hook(name):
        def check(_, __, out):
            if not found and isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
                found.append(name)
        return check

    for name, module in model.named_modules():
        if not list(module.children()):
            module.register_forward_hook(hook(name))
    return found


def _too_large(what: str, values: torch.Tensor) -> str:
    largest = values.abs().max().item()
    return f"{what} themselves reach {largest:.4g}" if not largest < FP16_MAX else ""


def make_fp16_safe(vae, images: torch.Tensor, latents: torch.Tensor) -> Fp16Report:
    """Rescale `vae` (a float32 ``CustomAutoencoderKL``, changed in place) so that float16 does not overflow on
    `images` (N, 3, H, W in [-1, 1]) and decoder `latents`; sets ``force_upcast`` False if it then runs in float16
    without NaN or inf. Where float16 still overflows (in a layer no scale reaches: the latents themselves, the
    encoder's moments), the float32 function is unchanged all the same, ``force_upcast`` is set True, a warning
    says where, and the report's ``fp16_error_after`` is inf. See the module docstring.

    Four passes: the activations measured in float32 on every input; then, on the inputs reaching some part of the
    stream's largest value (where float16 overflows first, if anywhere), the round trip in float32 and in float16
    before the fix, and in float32 and float16 after it."""
    if vae.dtype != torch.float32:
        raise UserError(f"make_fp16_safe measures the VAE in float32; it is {vae.dtype}: call .float() first")
    vae.eval()
    unscaled = {side: [m for m in modules if m is not None] for side, modules in (
        ("encoder", [vae.encoder.conv_out, vae.quant_conv]), ("decoder", [vae.post_quant_conv, vae.decoder.conv_out]))}
    # float16 cannot even hold inputs this large; checked first, since every layer's NaN then follows from them
    too_large = _too_large("the latents", latents) or _too_large("the images", images)
    measure = _Measure([vae.encoder, vae.decoder], unscaled["encoder"] + unscaled["decoder"])
    try:
        decoded = _decoded(vae, latents)
        with torch.no_grad():
            vae.encode(images)
    finally:
        measure.remove()

    names = {module: name for name, module in vae.named_modules()}
    eps = vae.encoder.conv_norm_out.eps
    scales: dict[str, float] = {}
    largest_after = 0.0
    worst = {}  # per network, the inputs that reach the largest value of some part of its stream
    plans = []
    for side, network in (("encoder", vae.encoder), ("decoder", vae.decoder)):
        segments, links = _plan(network, measure, names)
        for segment in segments:
            segment.scale = _scale_for(segment.maximum, segment.min_variance, eps)
            scales[f"{side} {segment.name}"] = segment.scale
            largest_after = max(largest_after, segment.maximum * segment.scale)
        branch_scales = {}
        for role, _, _ in links:
            if role.branch:
                conv, norm = role.branch
                branch_scales[conv] = _scale_for(measure.maximum[conv], measure.min_variance[norm], eps)
                largest_after = max(largest_after, measure.maximum[conv] * branch_scales[conv])
        scales.update({f"{names[conv]} (residual branch)": s for conv, s in branch_scales.items()})
        # the layers no scale reaches keep their largest outputs: float16 is checked on the inputs reaching them too
        largest_after = max([largest_after] + [measure.maximum[m] for m in unscaled[side]])
        worst[side] = sorted({s.worst_input for s in segments} | {measure.worst_input[c] for c in branch_scales}
                             | {measure.worst_input[m] for m in unscaled[side]})
        plans.append((segments, links, branch_scales))

    images, latents, decoded = images[worst["encoder"]], latents[worst["decoder"]], decoded[worst["decoder"]]
    reference = [decoded, _round_trip(vae, images)]
    half, checked_on = in_float16(vae)
    half_before = [_decoded(half, latents), _round_trip(half, images)]
    del half
    for segments, links, branch_scales in plans:
        _apply(segments, links, branch_scales)
    fixed = [_decoded(vae, latents), _round_trip(vae, images)]
    half, _ = in_float16(vae)
    first_overflow = _first_overflow(half)
    half_after = [_decoded(half, latents), _round_trip(half, images)]
    del half
    safe = math.isfinite(_error(half_after, fixed))
    # never a false claim: force_upcast false only where float16 was seen to run without NaN or inf
    vae.register_to_config(force_upcast=not safe)
    overflow = "" if safe else too_large or (f"first in {first_overflow[0]}" if first_overflow else "NaN in the output")
    if not safe:
        warnings.warn(f"float16 cannot be made safe: it still overflows ({overflow}); the VAE keeps its float32 "
                      "function and force_upcast is set true, so pipelines decode it in float32", stacklevel=2)
    return Fp16Report(
        max_activation_before=max(measure.maximum.values()),
        # the scales are powers of two: every activation scales exactly with its part of the stream
        max_activation_after=largest_after,
        fp16_error_before=_error(half_before, reference),
        fp16_error_after=_error(half_after, fixed),
        fp32_change=_error(fixed, reference),
        scales=scales,
        checked_on=(f"{checked_on}, on {len(images)} image(s) and {len(latents)} latent(s) reaching the largest "
                    "activations"),
        overflow=overflow,
    )


def calibration_images(resolution: int = 256, count: int = 8) -> torch.Tensor:
    """Crops of the built-in photos, training and validation alike: what the encoder is measured on by default."""
    from ..data import evaluation_crops, read_images

    return evaluation_crops(list(read_images(None, resolution, limit=count)[0]), resolution, 1)[:count]


def calibration_latents(vae, count: int = 2, side: int = 32, seed: int = 0) -> torch.Tensor:
    """Latents of the spread a diffusion model hands the decoder: N(0, 1) in the UNet's scale, unscaled."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, vae.config.latent_channels, side, side, generator=generator)
    return z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
