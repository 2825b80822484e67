"""A VAE run in float16, fast wherever it runs: for real on a GPU, emulated on a CPU.

CPUs have no fast float16 kernels (a 3×3 convolution in float16 takes 50 times its float32 time here), so
on a CPU float16 is emulated on float32 kernels, as a GPU computes it: the weights rounded to float16, and
every layer's inputs and outputs rounded to float16 (values beyond 65504 become infinite, as they do in
float16), the arithmetic inside a layer done in float32, which is how GPU kernels accumulate convolutions,
GroupNorm statistics and attention. What a layer hands the next passes through float16 exactly as on a GPU;
``tests/models/test_fp16.py`` checks the emulation against real float16 on a small VAE, NaN for NaN.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504


def _round(value):
    """float32 tensors (in a tuple or not) through float16 and back: infinite beyond its range."""
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(torch.float16).float()
    if isinstance(value, tuple):
        return tuple(_round(v) for v in value)
    return value


def emulated_float16(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` that computes as float16 does (see the module docstring)."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in copied.parameters():
            parameter.copy_(_round(parameter))
    for module in copied.modules():
        if not list(module.children()):  # every layer: conv, linear, norm, dropout
            module.register_forward_pre_hook(lambda _, args: _round(args))
            module.register_forward_hook(lambda _, __, out: _round(out))
    return copied


def in_float16(model: nn.Module) -> tuple[nn.Module, str]:
    """(a copy of `model` computing in float16, how): real on a GPU, emulated elsewhere. A copy, because casting
    `model` there and back would round its float32 weights."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        return nn.Module.to(copy.deepcopy(model), torch.float16), f"float16 on {device}"  # (ModelMixin.to warns)
    return emulated_float16(model), "float16 emulated on float32 kernels (no fast float16 on a CPU)"
