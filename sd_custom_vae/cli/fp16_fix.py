"""sd-custom-vae fp16-fix IN OUT [--data SOURCE] [--ldm FILE]: a VAE that runs in float16 without overflow, exactly."""

from __future__ import annotations

import argparse

from ..base.errors import UserError
from . import add_data_flags, add_model_argument, data_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fp16-fix",
        help="rescale a VAE so it runs in float16 without NaN (exact, no training)",
        description="Measure the VAE's activations on real images and random latents, rescale its residual streams "
        "by powers of two so every activation stays well inside float16's range (GroupNorm makes this exact), set "
        "force_upcast false if float16 then runs without NaN (true, with a warning saying where it overflows, if "
        "not), and write a stock diffusers AutoencoderKL folder (and an LDM file with --ldm).",
    )
    add_model_argument(parser, "input", "the VAE to fix")
    parser.add_argument("output", help="the fixed VAE's folder (diffusers AutoencoderKL format)")
    add_data_flags(parser, "default: the built-in photos")
    parser.add_argument("--images", type=int, default=8, help="how many images to measure the encoder on (default 8)")
    parser.add_argument("--resolution", type=int, default=256, help="crop side of those images (default 256)")
    parser.add_argument("--ldm", default=None, metavar="FILE",
                        help="also write an LDM .safetensors file (A1111/ComfyUI)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs, as a whole, atomically")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..base.files import check_new
    from ..conversion import as_checkpoint, save_checkpoint
    from ..data import evaluation_crops, read_images
    from ..models import load_vae
    from ..models.fp16_rescale import calibration_latents, make_fp16_safe
    from . import pick_device, positive

    positive("--images", args.images)
    positive("--resolution", args.resolution, 8)
    check_new(args.output, args.overwrite)  # before any work
    if args.ldm:
        check_new(args.ldm, args.overwrite)
        if not str(args.ldm).endswith(".safetensors"):
            raise UserError(f"--ldm {args.ldm}: the LDM file is written as safetensors and must end in .safetensors")
    vae = load_vae(args.input, torch.float32, args.subfolder).to(pick_device(None))
    factor = vae.downsampling_factor
    if args.resolution % factor:
        raise UserError(f"--resolution {args.resolution} must be a multiple of the VAE's downsampling factor {factor}")
    found, _ = read_images(args.data, args.resolution, data_options(args), limit=args.images)
    images = evaluation_crops(list(found), args.resolution, 1)[: args.images]
    report = make_fp16_safe(vae, images, calibration_latents(vae))
    print(report)
    checkpoint = as_checkpoint(vae.state_dict(), dict(vae.config), source=str(args.input))
    print(f"wrote {save_checkpoint(checkpoint, args.output, 'diffusers', overwrite=args.overwrite)}")
    if args.ldm:
        print(f"wrote {save_checkpoint(checkpoint, args.ldm, 'ldm', overwrite=args.overwrite)}")
    return 0
