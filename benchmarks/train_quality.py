"""What the main job delivers: run the default `sd-custom-vae train` and report quality and wall time.

    python benchmarks/train_quality.py                   # the default: tiny preset, built-in photos
    python benchmarks/train_quality.py -- --steps 500    # anything after -- goes to `train`
    python benchmarks/train_quality.py --run RUN --wall-s S  # report a run the default command already made
                                                             # (e.g. distill_quality.py's teacher)

Prints validation PSNR/SSIM on the held-out photos' crops (see metrics.json) and the wall time of
the whole command, from start-up to the exported model, and appends the result to
benchmarks/results/train_quality.json.
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

from results_file import append_row


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
    row = {
        "preset": metrics["preset"], "steps": metrics["steps"], "resolution": config["resolution"],
        "eval_resolution": config.get("eval_resolution"), "parameters": metrics["parameters"],
        "psnr": metrics["psnr"], "ssim": metrics["ssim"], "val_crops": metrics["val_crops"],
        "training_s": metrics["wall_time_s"], "wall_s": None if wall is None else round(wall, 1), "cpus": os.cpu_count(),
        "extra_args": args.train_args, "run": str(output),
    }
    print(
        f"\npreset {row['preset']}: {row['steps']} steps, {row['parameters'] / 1e6:.2f}M parameters\n"
        f"validation PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f} on {row['val_crops']} held-out crops\n"
        f"wall time {'?' if wall is None else f'{wall / 60:.1f}'} min (training loop {row['training_s'] / 60:.1f} min) "
        f"on {row['cpus']} CPUs\n"
        f"run folder: {output}"
    )
    append_row("train_quality.json", row)


if __name__ == "__main__":
    main()
