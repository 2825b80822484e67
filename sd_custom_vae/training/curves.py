"""The loss curve of a run, saved as PNG: one panel per logged term, and validation PSNR."""

from __future__ import annotations

import os
from pathlib import Path

from ..base.files import atomic_path

TERM_TITLES = {
    "reconstruction": "reconstruction loss", "kl": "KL to N(0, I) (per sample)", "perceptual": "perceptual (ST-LPIPS)",
    "generator": "GAN: generator", "discriminator": "GAN: discriminator", "adversarial_weight": "GAN: adaptive weight",
    "logits_real": "GAN: logits on real", "logits_fake": "GAN: logits on fake", "latent": "latent error² vs teacher",
    "logvar": "log-variance error vs teacher", "colour": "latent colour misfit (Σ 1 − R², Y Cb Cr)",
    "grad_norm": "gradient norm (before clipping)",
}


def _smoothed(points: list[tuple[int, float]], weight: float = 0.98) -> list[tuple[int, float]]:
    """An exponential moving average with bias correction, so the first points are not pulled to zero."""
    average, out = 0.0, []
    for i, (step, value) in enumerate(points, start=1):
        average = weight * average + (1 - weight) * value
        out.append((step, average / (1 - weight**i)))
    return out


def save_loss_curve(history: list[dict], val_history: list[dict], path: str | os.PathLike) -> Path:
    """One panel per logged term against the step (log scale where the term is positive), and validation PSNR."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    terms = [k for k in (history[0] if history else {}) if k not in ("step", "lr", "total", "image_total")]
    panels = terms + (["validation PSNR (dB)"] if val_history else [])
    columns = min(3, max(1, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), dpi=100, squeeze=False)
    steps = [h["step"] for h in history]
    for axis, name in zip(axes.flat, panels, strict=False):  # the grid's last row may have more axes than panels
        if name in terms:
            values = [h.get(name) for h in history]
            present = [(s, v) for s, v in zip(steps, values, strict=True) if v is not None]
            axis.plot(*zip(*present, strict=True), linewidth=0.6, color="tab:blue", alpha=0.35, label="each step")
            axis.plot(*zip(*_smoothed(present), strict=True), linewidth=1.4, color="tab:blue", label="smoothed")
            if all(v > 0 for _, v in present):
                axis.set_yscale("log")
            axis.legend(fontsize=8, loc="best", framealpha=0.6)  # where it covers the least of the curves
        else:
            axis.plot([v["step"] for v in val_history], [v["psnr"] for v in val_history], "k.-")
        axis.set_title(TERM_TITLES.get(name, name), fontsize=11)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels):]:
        axis.axis("off")
    figure.suptitle("training", fontsize=13)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)
