"""What the course's GroupNorm epsilon (torch's default, 1e-5) changes against diffusers' and LDM's (1e-6), on the
same weights: the converted VAE run both ways.

    python benchmarks/course_epsilon.py [--trained RUN_OR_MODEL]

SD 1.x's architecture (the only one the course's modules hold) with random weights, and, with --trained, a trained
VAE's weights; prints the largest and the mean absolute difference of the latent mean and of a decode, in a
table, and appends a row to benchmarks/results/course_epsilon.json.
"""

from __future__ import annotations

import argparse
import copy

import torch
from results_file import append_row

from conversion import course
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.models import load_vae


def with_epsilon(vae: CustomAutoencoderKL, eps: float) -> CustomAutoencoderKL:
    changed = copy.deepcopy(vae)
    for module in changed.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = eps
    return changed


def differences(vae: CustomAutoencoderKL, side: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, side, side, generator=generator) * 2 - 1
    factor = vae.downsampling_factor
    latents = torch.randn(2, vae.config.latent_channels, side // factor, side // factor, generator=generator)
    latents = latents / vae.config.scaling_factor
    course_eps = with_epsilon(vae, course.GROUP_NORM_EPS_COURSE)
    with torch.no_grad():
        mean = (vae.encode(images).latent_dist.mean, course_eps.encode(images).latent_dist.mean)
        decoded = (vae.decode(latents).sample, course_eps.decode(latents).sample)
    return {
        "latent_max": (mean[0] - mean[1]).abs().max().item(), "latent_mean": (mean[0] - mean[1]).abs().mean().item(),
        "decode_max": (decoded[0] - decoded[1]).abs().max().item(),
        "decode_mean": (decoded[0] - decoded[1]).abs().mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", default=None, help="also a trained VAE (a run, a model folder, a file)")
    parser.add_argument("--side", type=int, default=128, help="image side (default 128)")
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {"SD 1.x architecture, random weights": CustomAutoencoderKL(**course.ARCHITECTURE).eval()}
    if args.trained:
        cases[f"trained: {args.trained}"] = load_vae(args.trained, torch.float32)
    print("| weights | latent mean: max / mean abs difference | decode: max / mean abs difference |")
    print("|---|---|---|")
    for name, vae in cases.items():
        row = differences(vae, args.side)
        print(f"| {name} | {row['latent_max']:.2e} / {row['latent_mean']:.2e} | {row['decode_max']:.2e} / "
              f"{row['decode_mean']:.2e} |")
        append_row("course_epsilon.json", {"weights": name, "side": args.side, **row})


if __name__ == "__main__":
    main()
