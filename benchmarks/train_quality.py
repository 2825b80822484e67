"""What the main job delivers: run the default `sd-custom-vae train` and report quality and wall time.

    python benchmarks/train_quality.py                   # the default: tiny preset, built-in photos
    python benchmarks/train_quality.py -- --steps 500    # anything after -- goes to `train`
    python benchmarks/train_quality.py --run RUN --wall-s S  # report a run the default command already made
                                                             # (e.g. distill_quality.py's teacher)

Prints the wall time of the whole command, from start-up to the exported model, then `sd-custom-vae eval` of the
model on the held-out built-in photos, at 256-px and 64-px crops (CROPS_PER_PHOTO places in each photo: the
centre, towards the corners, then a grid; at 64 px enough for the rFID to rest on a few hundred crops): PSNR,
SSIM, LPIPS and rFID, for the model and, measured the same way on the same crops, for plain resizing (area down
by the model's factor, bicubic up), which keeps about as many numbers per image as the latent and is what a VAE
has to beat. Beside them, the PSNR the model's reconstructions would have if the colour of each latent pixel's
block were exact (its brightness and detail kept): the distance between that and the model's PSNR is what it
loses in colour. Appends the row to benchmarks/results/train_quality.json.
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
    evals = {size: evaluate(output, size) for size in SIZES}
    vae = load_vae(output / "model", dtype=torch.float32)
    factor = downsampling_factor(vae.config.block_out_channels)
    held_out = protocol_crops(builtin_held_out(), "crops", 256, per_image=CROPS_PER_PHOTO[256])  # eval's crops
    colour_fixed = colour_fixed_psnr(vae, held_out, factor)
    row = {
        "preset": metrics["preset"], "steps": metrics["steps"], "resolution": config["resolution"],
        "final_resolution": config.get("final_resolution"),
        "final_alternate_resolution": config.get("final_alternate_resolution"),
        "learning_rate": config["learning_rate"],
        "seed": config["seed"], "reconstruction": config["reconstruction"], "model": config["model"],
        "init": config.get("init"), "parameters": metrics["parameters"],
        "mixed_precision": metrics.get("mixed_precision"),
        **{f"{key}_{size}": value for size, table in evals.items() for key, value in table.items()},
        "colour_fixed_psnr_256": colour_fixed,
        "training_s": metrics["wall_time_s"], "wall_s": None if wall is None else round(wall, 1),
        "cpus": os.cpu_count(),
        "extra_args": args.train_args, "run": str(output),
    }
    print(
        f"\npreset {row['preset']}: {row['steps']} steps, {row['parameters'] / 1e6:.2f}M parameters, "
        f"precision {row['mixed_precision']}, seed {row['seed']}\n"
        f"wall time {'?' if wall is None else f'{wall / 60:.1f}'} min (training loop {row['training_s'] / 60:.1f} min) "
        f"on {row['cpus']} CPUs\n"
        f"held-out built-in photos ({evals[256]['images']} photos), {evals[256]['crops']} crops of 256 px and "
        f"{evals[64]['crops']} of 64 px:\n\n{table(evals)}\n\n"
        f"with the colour of each {factor}×{factor} block exact, the 256-px PSNR would be {colour_fixed:.2f} dB"
        + "".join(f"\n{metric} not measured: {why}" for metric, why in evals[256]["not_measured"].items())
        + f"\nrun folder: {output}"
    )
    append_row("train_quality.json", row)


SIZES = (256, 64)
# 16 × 7 = 112 crops at 256 px, 48 × 7 = 329 at 64 px: ST-LPIPS and the Inception features of three sets of 256-px
# crops (originals, the model's, resizing's) take most of the benchmark's time on a CPU
CROPS_PER_PHOTO = {256: 16, 64: 48}
MEASURES = (("psnr", "PSNR dB", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("lpips", "LPIPS", "{:.3f}"),
            ("rfid", "rFID", "{:.1f}"))


def evaluate(run: Path, size: int) -> dict:
    """`sd-custom-vae eval` of the run's model on the held-out built-in photos at `size` px: the model's measures
    and resizing's (eval's second row), each as {measure: value}."""
    folder = run.parent / f"eval-{size}"
    command = [sys.executable, "-m", "sd_custom_vae", "eval", str(run / "model"), "--resolution", str(size),
               "--crops-per-image", str(CROPS_PER_PHOTO[size]), "--output", str(folder), "--overwrite"]
    subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    table = json.loads((folder / "eval.json").read_text())
    model, resizing = table["vaes"]

    def measures(vae: dict) -> dict:
        # LPIPS is ST-LPIPS where the original is not installed: one column, named as eval names it
        distance = {"lpips": vae.get("lpips", vae.get("st_lpips"))}
        return {key: vae[key] for key in ("psnr", "ssim", "rfid") if key in vae} | distance

    return {"crops": table["crops"], "images": table["images"], "not_measured": table.get("not_measured", {}),
            **measures(model), **{f"resize_{key}": value for key, value in measures(resizing).items()}}


def table(evals: dict) -> str:
    """Markdown: the model and resizing, every measure at every size."""
    header = ["", *(f"{name} {size}" for size in SIZES for _, name, _ in MEASURES)]
    rows = [header, ["---"] * len(header)]
    for label, prefix in (("ours", ""), ("resizing", "resize_")):
        rows.append([label, *(form.format(evals[size][prefix + key]) if evals[size].get(prefix + key) is not None
                              else "—" for size in SIZES for key, _, form in MEASURES)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


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
