"""sd-custom-vae convert INPUT OUTPUT --to {diffusers,ldm,course} [--dtype fp32|fp16|bf16] [--overwrite]"""

from __future__ import annotations

import argparse

from ..base.files import check_new
from ..conversion import DTYPES, RENAMED_TARGETS, TARGETS, convert_checkpoint, resolve_target
from . import add_model_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert a VAE checkpoint between naming schemes and file formats",
        description="Read any SD-family VAE (LDM/A1111/ComfyUI file, whole SD checkpoint, diffusers folder, the "
        "course's layout, a file of ours; .safetensors or a weights-only pickle) and write it in diffusers' names "
        "(a model folder, or one .safetensors file), as an LDM single file, or in the course's layout, always as "
        "safetensors.",
    )
    add_model_argument(parser, "input", "the VAE to convert")
    parser.add_argument("output",
                        help="output folder or .safetensors file (--to diffusers), .safetensors file (ldm, course)")
    # an old spelling is translated (with a warning) before the choices are checked: --help lists the current ones
    parser.add_argument("--to", required=True, choices=TARGETS,
                        type=lambda to: resolve_target(to) if to in RENAMED_TARGETS else to,
                        help=f"output naming scheme: {', '.join(TARGETS)}")
    parser.add_argument("--dtype", choices=list(DTYPES), default=None, help="cast weights on output")
    parser.add_argument("--norm-num-groups", type=int, default=None,
                        help="GroupNorm groups of a VAE whose file does not record them (default 32, as every SD VAE)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output, as a whole, atomically")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..models.resolver import resolve
    from . import positive

    positive("--norm-num-groups", args.norm_num_groups)
    to = resolve_target(args.to)
    check_new(args.output, args.overwrite)  # before a download
    source = resolve(args.input, args.subfolder).path
    config = {"norm_num_groups": args.norm_num_groups} if args.norm_num_groups is not None else None
    print(convert_checkpoint(source, args.output, to=to, dtype=args.dtype, config=config,
                                        overwrite=args.overwrite))
    return 0
