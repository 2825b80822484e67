"""sd-custom-vae generate PROMPT --model PATH_OR_ID --vae PATH [--steps N] [--seed S] [--output out.png]"""

from __future__ import annotations

import argparse
import math

from ..base.errors import UserError
from ..base.files import atomic_path, check_new
from ..conversion import DTYPES
from . import add_device_flag, add_output_flags

# Stable Diffusion models draw at 512-1024 px; at 8192 px one activation of SD's VAE decoder (128 channels, float16)
# already takes 16 GiB, and the UNet's attention grows with the square of the pixel count
MAX_SIDE = 8192


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate an image with a Stable Diffusion pipeline that uses your VAE",
        description="Load a diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, ...: the model folder decides) "
        "with your VAE in place of its own, generate one image and write it atomically.",
    )
    parser.add_argument("prompt", help='what to draw, e.g. "a photo of a dog"')
    parser.add_argument("--model", required=True, help="diffusers pipeline folder or Hub id")
    parser.add_argument("--vae", required=True, help="VAE model folder (ours or AutoencoderKL) or checkpoint file")
    parser.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    add_output_flags(parser, "out.png", "image file to write")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's own")
    parser.add_argument("--height", type=int, default=None, help="default: the model's native size")
    parser.add_argument("--width", type=int, default=None, help="default: the model's native size")
    add_device_flag(parser)
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="auto: fp16 on a GPU, fp32 on the CPU")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from diffusers import AutoPipelineForText2Image
    from PIL import Image

    from ..models.pipeline import load_pipeline
    from . import pick_device, positive

    positive("--steps", args.steps)
    positive("--height", args.height, 8)
    positive("--width", args.width, 8)
    for flag, side in (("--height", args.height), ("--width", args.width)):
        if side is not None and side > MAX_SIDE:
            raise UserError(f"{flag} {side} is too large: at most {MAX_SIDE} px (Stable Diffusion models draw at "
                             f"512-1024 px, and at {MAX_SIDE} px one activation of the VAE's decoder already takes "
                             "16 GiB)")
    if args.guidance_scale is not None and not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise UserError(f"--guidance-scale must be a number of 0 or more (1: no guidance), got {args.guidance_scale}")
    output = check_new(args.output, args.overwrite)  # before minutes of loading
    image_format = Image.registered_extensions().get(output.suffix.lower())
    if image_format is None:
        raise UserError(f"{output}: unknown image extension {output.suffix!r}; use .png")
    device = pick_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp32" if device == "cpu" else "fp16")
    dtype = DTYPES[dtype_name]

    pipe = load_pipeline(args.model, args.vae, AutoPipelineForText2Image, dtype=dtype).to(device)
    options = {
        "negative_prompt": args.negative_prompt,
        "guidance_scale": args.guidance_scale,
        "height": args.height,
        "width": args.width,
    }
    image = pipe(
        args.prompt,
        num_inference_steps=args.steps,
        generator=torch.Generator(device).manual_seed(args.seed),
        **{key: value for key, value in options.items() if value is not None},
    ).images[0]
    with atomic_path(output) as tmp:
        image.save(tmp, format=image_format)
    print(f"wrote {output} ({image.width}x{image.height}, {args.steps} steps, seed {args.seed})")
    return 0
