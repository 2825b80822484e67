"""sd-custom-vae convert INPUT OUTPUT --to {diffusers,ldm,scratch} [--dtype fp32|fp16|bf16] [--overwrite]"""

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
    parser.add_argument("input", help="checkpoint file, diffusers model or pipeline folder, or Hub name ORG/NAME[@REVISION]")
    parser.add_argument("--subfolder", default=None, help="folder of the VAE inside the input repo or folder")
    parser.add_argument("output", help="output folder (--to diffusers) or .safetensors file (--to ldm/scratch)")
    parser.add_argument("--to", required=True, choices=["diffusers", "ldm", "scratch"], help="output naming scheme")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="cast weights on output")
    parser.add_argument("--norm-num-groups", type=int, default=None,
                        help="GroupNorm groups of the VAE, for files that do not record it (default 32, as every SD VAE)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (as a whole, atomically)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import conversion

    from ..loading import model_path
    from ..model_sources import locate

    conversion.check_new(args.output, args.overwrite)  # before a download
    source = model_path(locate(args.input, args.subfolder))
    config = {"norm_num_groups": args.norm_num_groups} if args.norm_num_groups is not None else None
    print(conversion.convert_checkpoint(source, args.output, to=args.to, dtype=args.dtype, config=config,
                                        overwrite=args.overwrite))
    return 0
