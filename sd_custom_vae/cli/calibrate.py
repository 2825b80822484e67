"""sd-custom-vae calibrate VAE --data DIR [--shift] [--crops N] [--resolution R] [--output FOLDER]"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..base.errors import UserError
from . import add_data_flags, add_device_flag, add_model_argument, add_output_flags, data_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure the VAE's latent scaling_factor (and shift_factor) on real images",
        description="Encode random crops of real images, set scaling_factor = 1/std of the sampled latents "
        "(how SD's 0.18215 was measured) and, with --shift, shift_factor = their mean, and record the "
        "calibration in the VAE's config.json. A model folder is updated in place (config.json only, "
        "atomically); a single checkpoint file needs --output.",
    )
    add_model_argument(parser, "vae")
    add_data_flags(parser, 'or "builtin" for the built-in photos (required)')
    parser.add_argument("--shift", action="store_true", help="also set shift_factor (SD3/Flux-style pipelines only)")
    parser.add_argument("--crops", type=int, default=256, help="random crops to encode (default 256)")
    parser.add_argument("--resolution", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="crops and latent samples are drawn from this seed")
    add_output_flags(parser, None, "save the calibrated model as this folder instead")
    add_device_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..base.files import atomic_folder, check_new, check_writable
    from ..conversion import CONFIG_NAME
    from ..evaluation.calibrate import apply_calibration, calibrate, write_calibration
    from ..models import load_vae
    from ..models.resolver import parse_hub_name, resolve
    from . import pick_device, positive

    if args.data is None:
        raise UserError('--data is required: the images to measure the latents on (or "builtin")')
    positive("--crops", args.crops)
    positive("--batch-size", args.batch_size)
    positive("--resolution", args.resolution, 8)
    in_place = args.output is None
    if in_place and not Path(args.vae).exists() and parse_hub_name(args.vae):
        raise UserError(f"{args.vae} is on the Hub, not a local folder to update in place; pass --output FOLDER")
    source = resolve(args.vae, args.subfolder).path
    if in_place and not (source / CONFIG_NAME).is_file():
        raise UserError(f"{source} has no config.json to update (a single checkpoint file?); pass --output FOLDER")
    target = source / CONFIG_NAME if in_place else Path(args.output)
    # before the encoding work; updating the model's own config.json in place is what calibrate is asked to do
    check_writable(target) if in_place else check_new(target, args.overwrite)

    device = pick_device(args.device)
    vae = load_vae(source, torch.float32).to(device)
    previous = vae.config.scaling_factor
    result = calibrate(
        vae, args.data, resolution=args.resolution, crops=args.crops, shift=args.shift, batch_size=args.batch_size,
        seed=args.seed, options=data_options(args),
    )
    if in_place:
        write_calibration(source, result)
    else:
        apply_calibration(vae, result)
        with atomic_folder(target, overwrite=args.overwrite) as staging:
            vae.save_pretrained(staging)
    shift = f", shift_factor {result.shift_factor:.6g}" if result.shift_factor is not None else ""
    print(
        f"scaling_factor {previous:.6g} → {result.scaling_factor:.6g}{shift} "
        f"(latents: mean {result.latent_mean:.4g}, std {result.latent_std:.4g} over {result.crops} "
        f"{result.resolution}px crops of {result.data}); wrote {target}"
    )
    return 0
