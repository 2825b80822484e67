"""Colour as luma and chroma: what the colour term fits and what hue rotation turns."""

from __future__ import annotations

import math

import torch

# JPEG's YCbCr, brightness (BT.601 luma) and the two colour differences, without the offsets: on images in
# [-1, 1] a grey has Cb = Cr = 0.
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]])
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)


def rotate_hue(image: torch.Tensor, angle: float) -> torch.Tensor:
    """`image` (3, H, W) in [-1, 1] with its chroma (Cb, Cr) turned `angle` radians round the colour wheel, its
    luma kept; colours the turn carries outside RGB are clipped to it."""
    cos, sin = math.cos(angle), math.sin(angle)
    turn = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = YCBCR_TO_RGB @ turn @ RGB_TO_YCBCR
    return torch.einsum("ij,jhw->ihw", matrix, image).clamp(-1, 1)
