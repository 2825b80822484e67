"""What the main job delivers: run the default `sd-custom-vae train` and report quality and wall time.

    python benchmarks/train_quality.py                   # the default: tiny preset, built-in photos
    python benchmarks/train_quality.py -- --steps 500    # anything after -- goes to `train`
    python benchmarks/train_quality.py --run RUN --wall-s S  # report a run the default command already made
                                                             # (e.g. distill_quality.py's teacher)

Prints the wall time of the whole command, from start-up to the exported model, then `sd-custom-vae eval`
of the model on the held-out built-in photos: PSNR/SSIM on 64-px and 256-px crops, and rFID (with its image
count: a few dozen crops make it a rough signal) and LPIPS at 256 px; beside them, the PSNR of plain resizing
on the same crops (shrunk by the model's downsampling factor, enlarged back): what a VAE has to beat, since
its latent holds about as many numbers per image; and the PSNR the model's reconstructions would have if the
colour of each latent pixel's block were exact (its brightness and detail kept): the distance between that and
the model's PSNR is what it loses in colour. Appends the row to benchmarks/results/train_quality.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results_file import append_row

from sd_custom_vae.data import RGB_TO_YCBCR, builtin_held_out, protocol_crops
from sd_custom_vae.evaluation.metrics import psnr
from sd_custom_vae.evaluation.quality import reconstruction_quality
from sd_custom_vae.models import load_vae
from sd_custom_vae.network import downsampling_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=None, help="run folder (default: a temporary folder)")
    parser.add_argument("--run", default=None, help="report this finished run instead of training")
    parser.add_argument("--wall-s", type=float, default=None, help="with --run: the wall time its command took")
    parser.add_argument("train_args", nargs="*", help="extra arguments for `sd-custom-vae train` (after --)")
    args = parser.parse_args()
    if args.run:
        output, wall = Path(args.run), args.wall_s
    else:
        output = Path(args.output or tempfile.mkdtemp(prefix="train-quality-")) / "run"
        command = [sys.executable, "-m", "sd_custom_vae.cli", "train", "--output", str(output), *args.train_args]
        print("+", " ".join(command), flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        wall = time.perf_counter() - start

    metrics = json.loads((output / "metrics.json").read_text())
    config = json.loads((output / "train_config.json").read_text())
    evals = {size: evaluate(output, size) for size in (64, 256)}
    vae = load_vae(output / "model", dtype=torch.float32)
    factor = downsampling_factor(vae.config.block_out_channels)
    photos = builtin_held_out()
    for size, table in evals.items():
        held_out = protocol_crops(photos, "crops", size, per_image=4)  # the crops `evaluate` measured
        table["resize_psnr"] = resize_psnr(held_out, factor)
        if size == 256:
            table["colour_fixed_psnr"] = colour_fixed_psnr(vae, held_out, factor)
    row = {
        "preset": metrics["preset"], "steps": metrics["steps"], "resolution": config["resolution"],
        "final_resolution": config.get("final_resolution"), "learning_rate": config["learning_rate"],
        "seed": config["seed"], "reconstruction": config["reconstruction"], "model": config["model"],
        "parameters": metrics["parameters"],
        "mixed_precision": metrics.get("mixed_precision"),
        **{f"{key}_{size}": value for size, table in evals.items() for key, value in table.items()},
        "training_s": metrics["wall_time_s"], "wall_s": None if wall is None else round(wall, 1),
        "cpus": os.cpu_count(),
        "extra_args": args.train_args, "run": str(output),
    }
    print(
        f"\npreset {row['preset']}: {row['steps']} steps, {row['parameters'] / 1e6:.2f}M parameters, "
        f"precision {row['mixed_precision']}\n"
        f"wall time {'?' if wall is None else f'{wall / 60:.1f}'} min (training loop {row['training_s'] / 60:.1f} min) "
        f"on {row['cpus']} CPUs\n"
        f"held-out built-in photos, 64-px crops:  PSNR {row['psnr_64']:.2f} dB, SSIM {row['ssim_64']:.3f} "
        f"({row['crops_64']} crops); resizing ×{factor} down and up: {row['resize_psnr_64']:.2f} dB\n"
        f"held-out built-in photos, 256-px crops: PSNR {row['psnr_256']:.2f} dB, SSIM {row['ssim_256']:.3f}, "
        + (f"rFID {row['rfid_256']:.1f} over {row['crops_256']} crops, " if "rfid_256" in row else "")
        + (f"LPIPS {row.get('lpips_256', row.get('st_lpips_256')):.3f}"
           if any(k in row for k in ("lpips_256", "st_lpips_256")) else "")
        + f"; resizing ×{factor} down and up: {row['resize_psnr_256']:.2f} dB"
        + f"; with the colour of each {factor}×{factor} block exact: {row['colour_fixed_psnr_256']:.2f} dB"
        + "".join(f"\n{metric} not measured: {why}" for metric, why in evals[256]["not_measured"].items())
        + f"\nrun folder: {output}"
    )
    append_row("train_quality.json", row)


def evaluate(run: Path, size: int) -> dict:
    """`sd-custom-vae eval` of the run's model on the held-out built-in photos at `size` px (4 crops per photo)."""
    folder = run.parent / f"eval-{size}"
    metrics = "psnr,ssim" if size < 256 else None  # rFID and LPIPS at 256 px (all that is installed)
    command = [sys.executable, "-m", "sd_custom_vae", "eval", str(run / "model"), "--resolution", str(size),
               "--crops-per-image", "4", "--output", str(folder), "--overwrite",
               *(["--metrics", metrics] if metrics else [])]
    subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    table = json.loads((folder / "eval.json").read_text())
    vae = table["vaes"][0]
    keys = ("psnr", "ssim", "rfid", "lpips", "st_lpips")
    return {"crops": table["crops"], "not_measured": table.get("not_measured", {}),
            **{key: vae[key] for key in keys if key in vae}}


def resize_psnr(held_out: torch.Tensor, factor: int) -> float:
    """PSNR of the crops `held_out` shrunk `factor`× (area average) and enlarged back (bicubic)."""
    small = F.interpolate(held_out, scale_factor=1 / factor, mode="area")
    resized = F.interpolate(small, scale_factor=factor, mode="bicubic").clamp(-1, 1)
    return psnr(resized, held_out).mean().item()


# BT.601 luma weights (YCbCr's first row). An offset along (1, 1, 1) changes only the luma Y, so an RGB error minus
# its luma along (1, 1, 1) is the error's colour part (its Cb and Cr), with the same luma as no error at all.
LUMA = RGB_TO_YCBCR[0].view(1, 3, 1, 1)


def colour_fixed_psnr(vae, held_out: torch.Tensor, factor: int) -> float:
    """PSNR of `vae`'s reconstructions of the crops `held_out` after the mean colour (not brightness) of each
    `factor`×`factor` block is set to the original's, the correction enlarged smoothly (bicubic)."""
    _, reconstructions = reconstruction_quality(vae, held_out)
    error = F.avg_pool2d(reconstructions - held_out, factor)
    colour_error = error - (LUMA * error).sum(1, keepdim=True)
    fixed = reconstructions - F.interpolate(colour_error, scale_factor=factor, mode="bicubic")
    return psnr(fixed.clamp(-1, 1), held_out).mean().item()


if __name__ == "__main__":
    main()
