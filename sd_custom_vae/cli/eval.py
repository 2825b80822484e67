"""sd-custom-vae eval VAE [VAE ...] [--data SOURCE] [--protocol crops|sd-vae-card] [--metrics ...] [--teacher VAE]"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..base.errors import UserError
from ..data.crops import PROTOCOLS
from ..evaluation.quality import METRICS
from . import add_data_flags, add_device_flag, add_model_argument, add_output_flags, data_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="compare VAEs: rFID, PSNR, SSIM, LPIPS, speed, and agreement with a teacher",
        description="Reconstruct the same images with every VAE and print a table; save it as eval.json with a "
        "PNG grid (original | each VAE). With --teacher: the latent relative error and the PSNR of decoding "
        "the teacher's latents. A VAE is a run folder, a model or pipeline folder, a checkpoint file or a Hub name.",
    )
    add_model_argument(parser, "vaes", "the VAEs to compare", nargs="+", metavar="VAE")
    add_data_flags(parser, "default: the built-in validation photos")
    parser.add_argument("--max-images", type=int, default=None, help="use at most this many images of --data")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0],
                        help="crops: fixed crops of every image (--crops-per-image); sd-vae-card: shorter side resized "
                        "to --resolution, centre crop, as the sd-vae-ft-mse card measures (default crops)")
    parser.add_argument("--metrics", default=None,
                        help=f"comma-separated, from {','.join(METRICS)} (default: all)")
    parser.add_argument("--teacher", default=None, help="the VAE whose latent space the others should reproduce")
    parser.add_argument("--resolution", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--crops-per-image", type=int, default=2, help="with --protocol crops (default 2)")
    add_output_flags(parser, "eval", "folder for eval.json and eval.png")
    add_device_flag(parser)
    parser.set_defaults(handler=run)


def _metrics(requested: str | None) -> tuple[str, ...]:
    if requested is None:
        return METRICS
    chosen = tuple(dict.fromkeys(m.strip() for m in requested.split(",") if m.strip()))
    unknown = [m for m in chosen if m not in METRICS]
    if unknown or not chosen:
        raise UserError(f"--metrics {requested!r}: choose from {', '.join(METRICS)}")
    return chosen


def _labels(names: list[str]) -> list[str]:
    """A row label per VAE: its name, numbered when the same VAE is named twice (each gets its row)."""
    labels = []
    for name in names:
        count = names[: len(labels)].count(name)
        labels.append(name if names.count(name) == 1 else f"{name} (#{count + 1})")
    return labels


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from ..base.files import check_new, write_json
    from ..data import held_out_images, protocol_crops, read_images
    from ..evaluation import fid
    from ..evaluation.figures import grid, save_png
    from ..evaluation.metrics import check_crop_side
    from ..evaluation.perceptual import distance_name
    from ..evaluation.quality import evaluate_vaes, format_table, unavailable
    from ..models import load_vae
    from . import pick_device, positive

    positive("--resolution", args.resolution, 8)
    positive("--crops-per-image", args.crops_per_image)
    positive("--max-images", args.max_images)
    metrics = _metrics(args.metrics)
    perceptual = distance_name() if "lpips" in metrics and "lpips" not in unavailable(metrics) else None
    check_crop_side(args.resolution, "--resolution", perceptual, instead=", or leave lpips out of --metrics")
    output = Path(args.output)
    for name in ("eval.json", "eval.png"):  # before minutes of evaluation
        check_new(output / name, args.overwrite)
    for metric, why in unavailable(metrics).items():
        print(f"{metric}: not measured: {why}")
    device = pick_device(args.device)
    labels = _labels(list(args.vaes))
    loaded = {}
    for name in dict.fromkeys(args.vaes):
        loaded[name] = load_vae(name, torch.float32, args.subfolder).to(device)
    vaes = {label: loaded[name] for label, name in zip(labels, args.vaes)}
    teacher = load_vae(args.teacher, torch.float32, args.subfolder).to(device) if args.teacher else None
    if teacher is not None:
        for label, vae in vaes.items():
            if (vae.config.latent_channels != teacher.config.latent_channels
                    or vae.downsampling_factor != teacher.downsampling_factor):
                raise UserError(
                    f"{label} makes latents of {vae.config.latent_channels} channels at 1/{vae.downsampling_factor} "
                    f"of the image, the teacher {args.teacher} of {teacher.config.latent_channels} at "
                    f"1/{teacher.downsampling_factor}: a latent space can only be compared with one of its shape"
                )
    if args.data is None:  # the built-in photos: their held-out ones, never trained on
        images, where = held_out_images(args.resolution)
    else:
        images, where = read_images(args.data, args.resolution, data_options(args), limit=args.max_images)
    factors = {v.downsampling_factor for v in vaes.values()}
    if any(args.resolution % f for f in factors):
        raise UserError(f"--resolution {args.resolution} must be a multiple of every VAE's downsampling factor "
                         f"{sorted(factors)}")
    crops = protocol_crops(list(images), args.protocol, args.resolution, args.crops_per_image)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rFID's small-sample warning is said below, once
        reports, reconstructions = evaluate_vaes(vaes, crops, teacher, metrics=metrics)
    print(f"{len(crops)} crops of {args.resolution}px from {len(images)} images ({where}), protocol {args.protocol}")
    print(format_table(reports))
    distance = next((key for key in ("lpips", "st_lpips") if key in reports[0].metrics), None)
    if distance:
        described = ("LPIPS (AlexNet, the original weights)" if distance == "lpips"
                     else "ST-LPIPS (AlexNet, shift-tolerant; the original LPIPS is not available offline here)")
        print(f"perceptual distance: {described}")
    if "rfid" in reports[0].metrics:
        print(f"rFID over {len(crops)} images")
        if (warning := fid.few_images_warning(len(crops))) is not None:
            warnings.warn(warning, stacklevel=1)
    output.mkdir(parents=True, exist_ok=True)
    write_json(
        {"crops": len(crops), "images": len(images), "data": where, "protocol": args.protocol,
         "resolution": args.resolution, "teacher": args.teacher, "metrics": list(metrics),
         "not_measured": unavailable(metrics),
         "vaes": [{"name": r.name, "parameters": r.parameters, **r.metrics} for r in reports]},
        output / "eval.json",
    )
    short = [Path(r.name).name if Path(r.name).name != "model" else Path(r.name).parent.name for r in reports]
    save_png(grid([crops, *reconstructions], labels=["original", *short]), output / "eval.png")
    print(f"table: {output / 'eval.json'}  grid: {output / 'eval.png'}")
    return 0
