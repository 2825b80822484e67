"""sd-custom-vae eval VAE [VAE ...] [--data DIR] [--teacher VAE]: quality, speed and teacher agreement side by side."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare VAEs: PSNR, SSIM, ST-LPIPS, speed, and agreement with a teacher",
        description="Reconstruct the same crops with every VAE and print a table; save it as eval.json with a "
        "PNG grid (original | each VAE). With --teacher: the latent relative error and the PSNR of decoding "
        "the teacher's latents. A VAE is a run folder, a model folder or any checkpoint file.",
    )
    parser.add_argument("vaes", nargs="+", metavar="VAE")
    parser.add_argument("--data", default=None, help="folder of images (all are used); default: the built-in validation photos")
    parser.add_argument("--teacher", default=None, help="the VAE whose latent space the others should reproduce")
    parser.add_argument("--resolution", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--crops-per-image", type=int, default=2)
    parser.add_argument("--output", default="eval", help="folder for eval.json and eval.png (default ./eval)")
    parser.add_argument("--overwrite", action="store_true", help="replace eval.json and eval.png already in --output")
    parser.set_defaults(handler=run)


def _model_path(path: str) -> Path:
    """A run folder stands for the model it exported."""
    from ..run_files import MODEL_DIR

    candidate = Path(path) / MODEL_DIR
    return candidate if candidate.is_dir() else Path(path)


def run(args: argparse.Namespace) -> int:
    import torch

    import conversion

    from ..data import builtin_photos, evaluation_crops, find_images, load_images
    from ..evaluation import evaluate_vaes, format_table
    from ..images import grid, save_png
    from ..loading import load_vae

    output = Path(args.output)
    for name in ("eval.json", "eval.png"):  # before minutes of evaluation
        conversion.check_new(output / name, args.overwrite)
    vaes = {path: load_vae(_model_path(path), dtype=torch.float32) for path in args.vaes}
    teacher = load_vae(_model_path(args.teacher), dtype=torch.float32) if args.teacher else None
    paths = builtin_photos()[1] if args.data is None else find_images(args.data)
    images = load_images(paths, args.resolution)
    if not images:
        raise ValueError(f"{args.data or 'built-in photos'}: no readable images")
    crops = evaluation_crops(images, args.resolution, args.crops_per_image)
    factors = {2 ** (len(v.config.block_out_channels) - 1) for v in vaes.values()}
    if any(args.resolution % f for f in factors):
        raise ValueError(f"--resolution {args.resolution} must be a multiple of every VAE's downsampling factor {sorted(factors)}")

    reports, reconstructions = evaluate_vaes(vaes, crops, teacher)
    print(f"{len(crops)} crops of {args.resolution}px from {len(images)} images ({args.data or 'built-in validation photos'})")
    print(format_table(reports))
    output.mkdir(parents=True, exist_ok=True)
    conversion.write_json(
        {"crops": len(crops), "resolution": args.resolution, "teacher": args.teacher,
         "vaes": [{"name": r.name, "parameters": r.parameters, **r.metrics} for r in reports]},
        output / "eval.json",
    )
    labels = ["original"] + [Path(r.name).name if Path(r.name).name != "model" else Path(r.name).parent.name for r in reports]
    save_png(grid([crops, *reconstructions], labels=labels), output / "eval.png")
    print(f"table: {output / 'eval.json'}  grid: {output / 'eval.png'}")
    return 0
