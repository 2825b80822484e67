"""sd-custom-vae eval VAE [VAE ...] [--data SOURCE] [--protocol crops|sd-vae-card] [--metrics ...] [--teacher VAE]"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_data_flags, data_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare VAEs: rFID, PSNR, SSIM, LPIPS, speed, and agreement with a teacher",
        description="Reconstruct the same images with every VAE and print a table; save it as eval.json with a "
        "PNG grid (original | each VAE). With --teacher: the latent relative error and the PSNR of decoding "
        "the teacher's latents. A VAE is a run folder, a model or pipeline folder, a checkpoint file or a Hub name.",
    )
    parser.add_argument("vaes", nargs="+", metavar="VAE")
    add_data_flags(parser, "default: the built-in validation photos")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images of --data")
    parser.add_argument("--protocol", choices=["crops", "sd-vae-card"], default="crops",
                        help="crops: fixed crops of every image (--crops-per-image); sd-vae-card: shorter side resized "
                        "to --resolution, centre crop, as the sd-vae-ft-mse card measures (default crops)")
    parser.add_argument("--metrics", default=None,
                        help="comma-separated, from psnr,ssim,lpips,rfid (default: all that are installed)")
    parser.add_argument("--teacher", default=None, help="the VAE whose latent space the others should reproduce")
    parser.add_argument("--subfolder", default=None, help="folder of the VAEs inside their repos or folders")
    parser.add_argument("--resolution", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--crops-per-image", type=int, default=2, help="with --protocol crops (default 2)")
    parser.add_argument("--output", default="eval", help="folder for eval.json and eval.png (default ./eval)")
    parser.add_argument("--overwrite", action="store_true", help="replace eval.json and eval.png already in --output")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.set_defaults(handler=run)


def _metrics(requested: str | None) -> tuple[str, ...]:
    from .. import fid, perceptual
    from ..evaluation import METRICS

    if requested is None:  # everything this installation can compute
        return tuple(m for m in METRICS if (m != "rfid" or fid.available()) and (m != "lpips" or perceptual.available()))
    chosen = tuple(dict.fromkeys(m.strip() for m in requested.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise ValueError(f"--metrics {requested!r}: choose from {', '.join(METRICS)}")
    return chosen


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    import conversion

    from .. import fid
    from ..evaluation import evaluate_vaes, format_table, protocol_crops
    from ..image_sources import builtin_held_out, open_source, take
    from ..images import grid, save_png
    from ..loading import load_vae
    from . import pick_device

    if args.resolution < 8 or args.crops_per_image < 1 or (args.max_images is not None and args.max_images < 1):
        raise ValueError("--resolution must be at least 8, --crops-per-image and --max-images at least 1")
    metrics = _metrics(args.metrics)
    output = Path(args.output)
    for name in ("eval.json", "eval.png"):  # before minutes of evaluation
        conversion.check_new(output / name, args.overwrite)
    device = pick_device(args.device)
    vaes = {name: load_vae(name, torch.float32, args.subfolder).to(device) for name in args.vaes}
    teacher = load_vae(args.teacher, torch.float32, args.subfolder).to(device) if args.teacher else None
    if args.data is None:  # the built-in photos: their held-out ones, never trained on
        images = builtin_held_out()
        where = "built-in validation photos"
    else:
        source = open_source(args.data, data_options(args))
        images = take(source, args.max_images)
        where = source.description
    if not images:
        raise ValueError(f"{where}: no readable images")
    factors = {v.downsampling_factor for v in vaes.values()}
    if any(args.resolution % f for f in factors):
        raise ValueError(f"--resolution {args.resolution} must be a multiple of every VAE's downsampling factor {sorted(factors)}")
    crops = protocol_crops(images, args.protocol, args.resolution, args.crops_per_image)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rFID's small-sample warning is said below, once
        reports, reconstructions = evaluate_vaes(vaes, crops, teacher, metrics=metrics)
    print(f"{len(crops)} crops of {args.resolution}px from {len(images)} images ({where}), protocol {args.protocol}")
    print(format_table(reports))
    distance = next((key for key in ("lpips", "st_lpips") if key in reports[0].metrics), None)
    if distance:
        print(f"perceptual distance: {'LPIPS (AlexNet, the original weights)' if distance == 'lpips' else 'ST-LPIPS (AlexNet, shift-tolerant; the original LPIPS is not available offline here)'}")
    if "rfid" in metrics:
        print(f"rFID over {len(crops)} images")
        if len(crops) < fid.FEW_IMAGES:
            warnings.warn(f"rFID over {len(crops)} images is noisy and biased upward below {fid.FEW_IMAGES} "
                          "(published tables use 5,000 to 50,000): pass more images with --data", stacklevel=1)
    output.mkdir(parents=True, exist_ok=True)
    conversion.write_json(
        {"crops": len(crops), "images": len(images), "data": where, "protocol": args.protocol,
         "resolution": args.resolution, "teacher": args.teacher, "metrics": list(metrics),
         "vaes": [{"name": r.name, "parameters": r.parameters, **r.metrics} for r in reports]},
        output / "eval.json",
    )
    labels = ["original"] + [Path(r.name).name if Path(r.name).name != "model" else Path(r.name).parent.name for r in reports]
    save_png(grid([crops, *reconstructions], labels=labels), output / "eval.png")
    print(f"table: {output / 'eval.json'}  grid: {output / 'eval.png'}")
    return 0
