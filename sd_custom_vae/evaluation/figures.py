"""Pictures a person would rather see than read: reconstruction grids and the reconstruction figure, as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from ..base.files import atomic_path
from ..data import to_image


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def grid(rows: list[torch.Tensor], labels: list[str] | None = None, max_columns: int = 8, pad: int = 2) -> Image.Image:
    """Rows of images ((N, 3, H, W) in [-1, 1]) side by side; an optional label at the left of each row."""
    columns = min(max_columns, min(len(r) for r in rows))
    height, width = rows[0].shape[-2:]
    font = ImageFont.load_default(size=max(11, min(20, height // 12)))  # legible beside small and large tiles
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 0 if not labels else 12 + int(max(measure.textlength(label, font=font) for label in labels))
    canvas = Image.new(
        "RGB", (label_width + columns * (width + pad) + pad, len(rows) * (height + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (height + pad)
        if labels:
            draw.text((6, y + height // 2), labels[r], fill=(0, 0, 0), font=font, anchor="lm")
        for c in range(columns):
            canvas.paste(to_image(row[c]), (label_width + pad + c * (width + pad), y))
    return canvas


def detail(images: torch.Tensor, side: int) -> torch.Tensor:
    """The centre `side`×`side` of each image, enlarged ×2 (nearest: pixels stay pixels)."""
    height, width = images.shape[-2:]
    top, left = (height - side) // 2, (width - side) // 2
    crop = images[:, :, top : top + side, left : left + side]
    return crop.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def error_map(originals: torch.Tensor, reconstructions: torch.Tensor, full_scale: float = 0.25) -> torch.Tensor:
    """|original − reconstruction| per pixel (mean over RGB, on the 0–1 scale) as a heat map: black is exact,
    yellow is an error of `full_scale` or more. Returned as images in [-1, 1]."""
    from matplotlib import colormaps

    error = ((originals - reconstructions).abs().mean(1) / 2 / full_scale).clamp(0, 1)
    colored = torch.from_numpy(colormaps["inferno"](error.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    return colored * 2 - 1


def reconstruction_figure(originals: torch.Tensor, reconstructions: torch.Tensor, resized: torch.Tensor,
                          columns: int = 6) -> Image.Image:
    """What a person checks first: originals, the VAE's reconstructions, the same images resized (what a VAE has
    to beat), a zoomed detail of each (original | VAE | resized) and where each one's error is, one held-out image
    per column."""
    originals, reconstructions, resized = (images[:columns].float().cpu()
                                           for images in (originals, reconstructions, resized))
    side = originals.shape[-1] // 4  # the detail: a quarter of the width at twice its size, three side by side
    zoom = torch.cat([detail(images, side) for images in (originals, reconstructions, resized)], dim=-1)
    zoom = torch.nn.functional.interpolate(zoom, size=originals.shape[-2:], mode="nearest")
    rows = [originals, reconstructions, resized, zoom, error_map(originals, reconstructions),
            error_map(originals, resized)]
    labels = ["original", "VAE", "resized", "detail: orig | VAE | resized", "VAE error (0 to 0.25)",
              "resized error"]
    return grid(rows, labels, max_columns=columns)
