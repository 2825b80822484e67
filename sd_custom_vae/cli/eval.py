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
        description="Reconstruct the same images with every VAE and print a table, with plain resizing (area down "
        "by each VAE's factor, bicubic up: what a VAE has to beat) measured the same way on the same crops; save it "
        "as eval.json with a PNG grid (original | each VAE | resizing). With --teacher: the latent relative error "
        "and the PSNR of decoding the teacher's latents. A VAE is a run folder, a model or pipeline folder, a "
        "checkpoint file or a Hub name.",
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


OUTPUT_FILES = ("eval.json", "eval.png")


def _check_output(output: Path, overwrite: bool) -> None:
    """eval's --output is a folder of its own (eval.json and eval.png, written together): a new one, an empty one,
    or with --overwrite an earlier eval's, replaced as a whole. A folder holding anything else is not replaced."""
    from ..base.files import check_new, check_writable

    check_writable(output)  # never a link or a special file
    if output.is_dir():
        others = sorted(p.name for p in output.iterdir() if p.name not in OUTPUT_FILES)
        if others:
            raise FileExistsError(f"--output {output} holds other files than eval's ({', '.join(others[:3])}"
                                  f"{', ...' if len(others) > 3 else ''}), and eval replaces its folder as a whole: "
                                  "choose another --output")
        if not overwrite:
            for name in OUTPUT_FILES:
                check_new(output / name)
    else:
        check_new(output, overwrite)


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

    from ..base.files import atomic_folder, write_json
    from ..data import held_out_images, protocol_crops, read_images
    from ..data.opener import refuse_unused
    from ..evaluation import fid
    from ..evaluation.figures import grid, save_png
    from ..evaluation.metrics import check_crop_side
    from ..evaluation.perceptual import distance_name
    from ..evaluation.quality import Resizing, evaluate_vaes, format_table, unavailable
    from ..models import load_vae
    from . import pick_device, positive

    positive("--resolution", args.resolution, 8)
    positive("--crops-per-image", args.crops_per_image)
    positive("--max-images", args.max_images)
    metrics = _metrics(args.metrics)
    perceptual = distance_name() if "lpips" in metrics and "lpips" not in unavailable(metrics) else None
    check_crop_side(args.resolution, "--resolution", perceptual, instead=", or leave lpips out of --metrics")
    output = Path(args.output)
    _check_output(output, args.overwrite)  # before minutes of evaluation
    for metric, why in unavailable(metrics).items():
        print(f"{metric}: not measured: {why}")
    device = pick_device(args.device)
    labels = _labels(list(args.vaes))
    loaded = {}
    for name in dict.fromkeys(args.vaes):
        loaded[name] = load_vae(name, torch.float32, args.subfolder).to(device)
    vaes = {label: loaded[name] for label, name in zip(labels, args.vaes, strict=True)}
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
        refuse_unused(data_options(args), None, "the built-in photos")
        images, where = held_out_images(args.resolution)
    else:
        images, where = read_images(args.data, args.resolution, data_options(args), limit=args.max_images)
    factors = {v.downsampling_factor for v in vaes.values()}
    if any(args.resolution % f for f in factors):
        raise UserError(f"--resolution {args.resolution} must be a multiple of every VAE's downsampling factor "
                         f"{sorted(factors)}")
    crops = protocol_crops(list(images), args.protocol, args.resolution, args.crops_per_image)
    for factor in sorted(factors):  # what a VAE has to beat, measured the same way on the same crops
        resizing = Resizing(factor)
        vaes[resizing.name] = resizing

    not_measured = unavailable(metrics, len(crops))
    for metric, why in not_measured.items():
        if metric not in unavailable(metrics):  # not said above: what these crops cannot give
            print(f"{metric}: not measured: {why}")
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
    short = [Path(r.name).name if Path(r.name).name != "model" else Path(r.name).parent.name for r in reports]
    _check_output(output, args.overwrite)  # still eval's own, minutes later
    # both files or neither, the earlier eval's replaced as a whole: a full disk leaves that one as it was
    with atomic_folder(output, overwrite=True) as staging:
        write_json(
            {"crops": len(crops), "images": len(images), "data": where, "protocol": args.protocol,
             "resolution": args.resolution, "teacher": args.teacher, "metrics": list(metrics),
             "not_measured": not_measured,
             "vaes": [{"name": r.name, "parameters": r.parameters, **r.metrics} for r in reports]},
            staging / "eval.json",
        )
        save_png(grid([crops, *reconstructions], labels=["original", *short]), staging / "eval.png")
    print(f"table: {output / 'eval.json'}  grid: {output / 'eval.png'}")
    return 0
