"""Latent-space calibration: the ``scaling_factor`` (and optionally ``shift_factor``) a diffusion model needs.

A UNet is trained on latents of roughly unit variance. Stable Diffusion's 0.18215 is 1/std of its
VAE's latents over real images; a VAE trained from scratch has its own spread, so its factor must
be measured the same way: ``scaling_factor = 1 / std(z)`` over many crops, with ``z`` drawn by
``latent_dist.sample()`` as pipelines draw them (img2img's ``retrieve_latents``). With a shift,
``shift_factor = mean(z)`` and pipelines that apply it (SD3, Flux; not SD 1.x/2.x or SDXL) feed
``(z - shift) * scale`` to their model; the std is centred either way, so the scale is the same.

The calibrated values and the record of how they were measured go into the VAE's config (the
"never calibrated" rule that reads them is ``latent_space.is_calibrated``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..base.errors import UserError
from ..base.files import read_json, write_json
from ..conversion import CONFIG_NAME
from ..data import Augmentation, DataOptions, RandomCrops, read_images
from ..models.latent_space import CALIBRATION_KEY
from ..network import downsampling_factor


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured, and the config values it implies. Stored as the config's record."""

    scaling_factor: float
    shift_factor: float | None  # None unless a shift was asked for
    latent_mean: float
    latent_std: float
    crops: int
    resolution: int
    data: str
    seed: int
    latents: str = "sample"  # how z was drawn from the posterior, as pipelines draw it


@torch.no_grad()
def latent_statistics(
    vae, batches, generator: torch.Generator, total: int | None = None, progress: bool = True
) -> tuple[float, float, int]:
    """(mean, std, number of crops) of latent samples over every element of every batch of images in [-1, 1]."""
    total_sum = total_squares = 0.0
    elements = crops = 0
    for batch in tqdm(batches, total=total, desc="encoding crops", unit="batch", disable=not progress):
        posterior = vae.encode(batch.to(vae.device, vae.dtype)).latent_dist
        z = posterior.sample(generator=generator).double()
        if not torch.isfinite(z).all():
            raise UserError(
                "the VAE's latents are NaN or infinite on real images: its weights are broken (a diverged run?) "
                "or it overflows in this dtype; calibrate a sound checkpoint, in float32"
            )
        total_sum += z.sum().item()
        total_squares += z.square().sum().item()
        elements += z.numel()
        crops += batch.shape[0]
    if crops == 0:
        raise UserError("no crops to calibrate on")
    mean = total_sum / elements
    # E[z²] - E[z]² in float64: exact enough unless the mean were ~1e6 times the std
    std = max(total_squares / elements - mean**2, 0.0) ** 0.5
    if not std > 0:
        raise UserError("the latents have zero spread: is the encoder untrained or broken?")
    return mean, std, crops


def calibrate(
    vae,
    data: str | Path | None,
    resolution: int = 256,
    crops: int = 256,
    shift: bool = False,
    batch_size: int = 8,
    seed: int = 0,
    options: DataOptions = DataOptions(),
    progress: bool = True,
) -> Calibration:
    """Measure `vae`'s latents on `crops` random crops of the images `data` names (as ``train --data`` reads it;
    None or "builtin": the built-in photos).

    `vae` is a ``CustomAutoencoderKL`` or a stock ``AutoencoderKL``: only ``encode`` is used.
    """
    if crops < 1 or batch_size < 1:
        raise UserError(f"--crops and --batch-size must be at least 1, got {crops} and {batch_size}")
    factor = downsampling_factor(vae.config.block_out_channels)
    if resolution < factor or resolution % factor:
        raise UserError(f"--resolution {resolution} must be a positive multiple of the VAE's downsampling factor "
                         f"{factor}")
    # every readable image: this measures the encoder, it trains nothing (a stream gives its first `crops`)
    images, description = read_images(data, resolution, options, stream_limit=crops)
    dataset = RandomCrops(images, resolution, seed=seed, augmentation=Augmentation(flip=False), length=crops)
    batches = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    generator = torch.Generator(vae.device).manual_seed(seed)
    mean, std, count = latent_statistics(vae, batches, generator, total=len(batches), progress=progress)
    return Calibration(scaling_factor=1.0 / std, shift_factor=mean if shift else None, latent_mean=mean, latent_std=std,
                       crops=count, resolution=resolution, data=description, seed=seed)


def config_values(calibration: Calibration) -> dict:
    """The config keys a calibration sets: the factors, and the record that marks the VAE calibrated."""
    values = {"scaling_factor": calibration.scaling_factor, CALIBRATION_KEY: asdict(calibration)}
    if calibration.shift_factor is not None:
        values["shift_factor"] = calibration.shift_factor
    return values


def apply_calibration(vae, calibration: Calibration) -> None:
    """Set the calibrated values on a loaded model; its ``save_pretrained`` then writes them."""
    vae.register_to_config(**config_values(calibration))


def write_calibration(folder: str | Path, calibration: Calibration) -> Path:
    """Update a model folder's ``config.json`` in place, atomically; the weights are not rewritten."""
    path = Path(folder) / CONFIG_NAME
    config = read_json(path)
    config.update(config_values(calibration))
    return write_json(config, path)
