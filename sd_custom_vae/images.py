"""Pictures a person would rather see than read: reconstruction grids and loss curves, saved as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from conversion import atomic_path

from .data import to_image


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def grid(rows: list[torch.Tensor], labels: list[str] | None = None, max_columns: int = 8, pad: int = 2) -> Image.Image:
    """Rows of images ((N, 3, H, W) in [-1, 1]) side by side; an optional label at the left of each row."""
    columns = min(max_columns, min(len(r) for r in rows))
    height, width = rows[0].shape[-2:]
    label_width = 0 if not labels else 8 + 7 * max(len(label) for label in labels)
    canvas = Image.new(
        "RGB", (label_width + columns * (width + pad) + pad, len(rows) * (height + pad) + pad), (255, 255, 255)
    )
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (height + pad)
        if labels:
            draw.text((4, y + height // 2 - 5), labels[r], fill=(0, 0, 0))
        for c in range(columns):
            canvas.paste(to_image(row[c]), (label_width + pad + c * (width + pad), y))
    return canvas


def save_loss_curve(history: list[dict], val_history: list[dict], path: str | os.PathLike) -> Path:
    """Every logged loss term against the step (log scale), with validation PSNR on a second axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    terms = [k for k in (history[0] if history else {}) if k not in ("step", "lr")]
    steps = [h["step"] for h in history]
    for term in terms:
        values = [h.get(term) for h in history]
        if all(v is not None and v > 0 for v in values):
            axis.plot(steps, values, label=term, linewidth=1)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    if val_history:
        right = axis.twinx()
        right.plot([v["step"] for v in val_history], [v["psnr"] for v in val_history], "k.-", label="val PSNR (dB)")
        right.set_ylabel("validation PSNR (dB)")
        right.legend(loc="upper center")
    axis.legend(loc="upper right")
    axis.set_title("training losses")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)
