"""fp16-fix on this machine's CPU: the current method against the earlier one, on the same VAE.

    python benchmarks/fp16_fix_speed.py [--config tiny|sd] [--ways new old]

- new: `sd-custom-vae fp16-fix`'s `make_fp16_safe` as it is: activations measured in float32, the result checked
  in float16 emulated on float32 kernels, on the inputs that reach the largest activations.
- old: what fp16-fix did before: the same measurement, then four reconstructions of every input, two of them in
  real float16 on the CPU (no fast kernels there).

Both on the command's default inputs (8 crops of the built-in photos at 256 px, the default calibration latents,
which were 4 then), on a random VAE of the two-level test config (widths 32/64) or SD 1.x's. Prints a table
and appends rows to benchmarks/results/fp16_fix_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from results_file import append_row

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.models.fp16_rescale import calibration_images, calibration_latents, make_fp16_safe

CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8),
    "sd": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4),
}


def old_way(vae: CustomAutoencoderKL, images: torch.Tensor, latents: torch.Tensor) -> None:
    """The earlier fp16-fix's passes: measurement, then float32 and real float16 reconstructions of every input,
    before and after (the scales themselves cost nothing)."""
    def reconstruct(model, dtype):
        with torch.no_grad():
            model.decode(latents.to(dtype))
            model.decode(model.encode(images.to(dtype)).latent_dist.mode())

    with torch.no_grad():
        vae.decoder(vae.post_quant_conv(latents))
        vae.encoder(images)
    for _ in range(2):  # before and after the fix
        reconstruct(vae, torch.float32)
        reconstruct(torch.nn.Module.to(copy.deepcopy(vae), torch.float16), torch.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(CONFIGS), default="tiny")
    parser.add_argument("--ways", nargs="+", choices=["new", "old"], default=["new", "old"])
    args = parser.parse_args()
    torch.manual_seed(0)
    vae = CustomAutoencoderKL(**CONFIGS[args.config]).eval()
    images = calibration_images(256, 8)
    rows = []
    for way in args.ways:
        model = copy.deepcopy(vae)
        latents = calibration_latents(model, count=2 if way == "new" else 4)
        started = time.perf_counter()
        report = make_fp16_safe(model, images, latents) if way == "new" else old_way(model, images, latents)
        seconds = time.perf_counter() - started
        row = {"config": args.config, "way": way, "seconds": round(seconds, 1), "threads": torch.get_num_threads()}
        if report is not None:
            row.update(fp16_error_after=report.fp16_error_after, checked_on=report.checked_on)
        rows.append(row)
        append_row("fp16_fix_speed.json", row)
    print("| VAE | method | seconds | float16 error after |")
    print("|---|---|---|---|")
    for row in rows:
        error = f"{row['fp16_error_after']:.2e}" if "fp16_error_after" in row else "—"
        print(f"| {row['config']} | {row['way']} | {row['seconds']} | {error} |")


if __name__ == "__main__":
    main()
