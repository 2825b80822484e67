"""sd-custom-vae convert INPUT OUTPUT --to {diffusers,ldm,scratch} [--dtype fp32|fp16|bf16]"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a VAE checkpoint between naming schemes and file formats",
        description="Read any SD-family VAE (LDM/A1111/ComfyUI file, whole SD checkpoint, diffusers folder, "
        "our own file; .safetensors or a weights-only pickle) and write it as a diffusers folder, an LDM "
        "single file or our scratch file, always as safetensors.",
    )
    parser.add_argument("input", help="checkpoint file or diffusers model folder")
    parser.add_argument("output", help="output folder (--to diffusers) or .safetensors file (--to ldm/scratch)")
    parser.add_argument("--to", required=True, choices=["diffusers", "ldm", "scratch"], help="output naming scheme")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="cast weights on output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import conversion

    print(conversion.convert_checkpoint(args.input, args.output, to=args.to, dtype=args.dtype))
    return 0
