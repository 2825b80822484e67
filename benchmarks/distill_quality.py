"""How well a small student stands in for a teacher that `train` produced.

    python benchmarks/distill_quality.py                          # teacher: default `train` (tiny preset)
    python benchmarks/distill_quality.py --teacher RUN_OR_MODEL   # reuse a trained teacher
    python benchmarks/distill_quality.py -- --steps 1500          # anything after -- goes to the distill run

1. Train the teacher exactly as README's first command does (`sd-custom-vae train`), unless given.
2. Distil the `student` preset from it (`sd-custom-vae train --config student --teacher ...`).
3. `sd-custom-vae eval student teacher --teacher teacher` on the held-out built-in photos.

Prints the latent relative error ‖z_student − z_teacher‖/‖z_teacher‖, the PSNR of the student
decoding the teacher's latents next to the teacher's own PSNR, and the student's speed ratio, and
appends them to benchmarks/results/distill_quality.json.
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


def sd_custom_vae(*args: str) -> float:
    command = [sys.executable, "-m", "sd_custom_vae", *args]
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=None, help="a trained teacher (run or model folder); default: train one")
    parser.add_argument("--output", default=None, help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--resolution", type=int, default=256, help="eval crop side (default 256)")
    parser.add_argument("distill_args", nargs="*", help="extra arguments for the distill run (after --)")
    args = parser.parse_args()
    output = Path(args.output or tempfile.mkdtemp(prefix="distill-quality-"))

    teacher_seconds = None
    teacher = Path(args.teacher) if args.teacher else output / "teacher"
    if args.teacher is None:
        teacher_seconds = sd_custom_vae("train", "--output", str(teacher), "--no-progress")
    teacher_model = teacher / "model" if (teacher / "model").is_dir() else teacher
    student = output / "student"
    student_seconds = sd_custom_vae(
        "train", "--config", "student", "--teacher", str(teacher_model), "--output", str(student), "--no-progress",
        *args.distill_args,
    )
    sd_custom_vae(
        "eval", str(student / "model"), str(teacher_model), "--teacher", str(teacher_model),
        "--resolution", str(args.resolution), "--output", str(output / "eval"),
    )

    table = json.loads((output / "eval" / "eval.json").read_text())
    ours, reference = table["vaes"][:2]  # then eval's row for resizing
    row = {
        "teacher_parameters": reference["parameters"], "student_parameters": ours["parameters"],
        "latent_relative_error": ours["latent_relative_error"],
        "student_decode_of_teacher_latents_psnr": ours["teacher_latent_psnr"],
        "teacher_psnr": reference["psnr"], "student_psnr": ours["psnr"],
        "psnr_gap_db": reference["psnr"] - ours["teacher_latent_psnr"],
        "decode_speedup": reference["decode_ms"] / ours["decode_ms"],
        "encode_speedup": reference["encode_ms"] / ours["encode_ms"],
        "teacher_train_s": teacher_seconds, "student_train_s": round(student_seconds, 1),
        "eval_resolution": args.resolution, "eval_crops": table["crops"], "distill_args": args.distill_args,
        "cpus": os.cpu_count(), "output": str(output),
    }
    print(
        f"\nteacher {row['teacher_parameters'] / 1e6:.2f}M parameters, student {row['student_parameters'] / 1e6:.2f}M"
        f"\nlatent relative error           {row['latent_relative_error']:.2%}   (target ≤ 5%)"
        f"\nstudent decode of teacher z     {row['student_decode_of_teacher_latents_psnr']:.2f} dB"
        f"   teacher's own {row['teacher_psnr']:.2f} dB   gap {row['psnr_gap_db']:.2f} dB (target ≤ 0.5 dB)"
        f"\nstudent decode speed-up         {row['decode_speedup']:.1f}×   (target ≥ 5×);"
        f" encode {row['encode_speedup']:.1f}×"
        f"\nstudent training                {row['student_train_s'] / 60:.1f} min on {row['cpus']} CPUs"
    )
    append_row("distill_quality.json", row)


if __name__ == "__main__":
    main()
