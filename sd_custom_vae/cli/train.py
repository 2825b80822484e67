"""sd-custom-vae train [--data DIR] [--output DIR] [--config preset|yaml] [--steps N] ... : the main job."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# flag → TrainConfig field; each flag overrides the preset or config file only when given
OVERRIDES = {
    "data": str, "output": str, "steps": int, "resolution": int, "eval_resolution": int, "batch_size": int,
    "beta": float,
    "learning_rate": float, "warmup_steps": int, "gradient_accumulation": int, "ema_decay": float,
    "mixed_precision": str, "gradient_checkpointing": bool, "seed": int, "reconstruction": str, "kl_reduction": str,
    "perceptual_weight": float, "disc_weight": float, "disc_start": int,
    "sample_every": int, "eval_every": int, "checkpoint_every": int, "keep_checkpoints": int,
    "mode": str, "teacher": str, "decoder_init": str, "student_width": float, "latent_weight": float,
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a VAE (the main job; with no arguments: the tiny preset on the built-in photos)",
        description="Train a ScratchVAE and export a CustomAutoencoderKL folder ready for vae=. "
        "With no arguments it trains the tiny preset on photos that installed packages ship, in minutes on a CPU.",
    )
    parser.add_argument(
        "--config", default=None, help="preset (tiny, small, student, sd) or a YAML/JSON file of TrainConfig fields"
    )
    parser.add_argument("--data", help="folder of images (searched recursively); default: the built-in photos")
    parser.add_argument("--output", help="run folder; default runs/<preset>-<timestamp>")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--resolution", type=int, help="training crop side in pixels")
    parser.add_argument("--eval-resolution", type=int, help="validation crop side in pixels (default: --resolution)")
    parser.add_argument("--batch-size", type=int, help="images per process per micro-step")
    parser.add_argument("--beta", type=float, help="KL weight (1e-6 is LDM's; see --kl-reduction)")
    parser.add_argument("--kl-reduction", choices=["ldm", "course"], help="how the KL term is scaled (see docs)")
    parser.add_argument("--reconstruction", choices=["mse", "l1"], help="reconstruction loss")
    parser.add_argument("--learning-rate", "--lr", type=float, dest="learning_rate")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--gradient-accumulation", type=int)
    parser.add_argument("--ema-decay", type=float, help="exponential moving average of weights (0 = off)")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass: less memory, more time")
    parser.add_argument("--perceptual-weight", type=float, help="ST-LPIPS weight (0 = off)")
    parser.add_argument("--disc-weight", type=float, help="PatchGAN weight (0 = off)")
    parser.add_argument("--disc-start", type=int, help="step at which the discriminator starts")
    parser.add_argument("--mode", choices=["scratch", "decoder-finetune", "distill"],
                        help="scratch (default), or train against --teacher so a pretrained UNet understands the latents")
    parser.add_argument("--teacher", help="the VAE whose latent space to keep (any checkpoint or folder convert reads)")
    parser.add_argument("--decoder-init", choices=["teacher", "scratch"],
                        help="decoder-finetune: start from the teacher's decoder (default) or from scratch")
    parser.add_argument("--student-width", type=float, help="distill: student channels as a fraction of the teacher's")
    parser.add_argument("--latent-weight", type=float, help="distill: weight of matching the teacher's latents")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--sample-every", type=int, help="save a reconstruction grid every N steps")
    parser.add_argument("--eval-every", type=int, help="validation PSNR/SSIM every N steps")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--keep-checkpoints", type=int, help="how many checkpoints to keep")
    parser.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="RUN_OR_CHECKPOINT",
        help="continue a run exactly: its folder (latest checkpoint) or one checkpoint folder; "
        "alone, the --output run. Its saved configuration is used; flags given here override it (e.g. --steps).",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def resolve_config(args: argparse.Namespace):
    from ..train_config import load_config

    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name, None) is not None}
    if args.resume and args.config is None:
        run = Path(args.output if args.resume is True else args.resume)
        run = run.parent.parent if (run / "state.json").exists() else run  # a checkpoint folder: its run
        saved = run / "train_config.json"
        if not saved.exists():
            raise FileNotFoundError(f"cannot resume: {saved} does not exist")
        values = json.loads(saved.read_text())
        return load_config(values.pop("preset"), **{**values, "output": str(run), **overrides})
    return load_config(args.config, **overrides)


def run(args: argparse.Namespace) -> int:
    from ..training import TrainingDiverged, train

    if args.resume is True and not args.output:
        raise ValueError("--resume without a folder needs --output RUN")
    config = resolve_config(args)
    try:
        result = train(config, resume=args.resume, progress=not args.no_progress)
    except TrainingDiverged as error:
        raise ValueError(str(error)) from error
    metrics = result.metrics
    if not result.main_process:
        return 0
    print(
        f"trained {result.steps} steps: validation PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}\n"
        f"run folder: {result.output} (model/ is ready for vae=; see reconstructions.png and loss_curve.png)"
    )
    return 0
