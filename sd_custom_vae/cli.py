"""The ``sd-custom-vae`` command line. Each subcommand parses its arguments here and calls the library."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _convert(args: argparse.Namespace) -> int:
    import conversion

    summary = conversion.convert_checkpoint(args.input, args.output, to=args.to, dtype=args.dtype)
    print(summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-custom-vae",
        description="Train, convert, evaluate and share Stable Diffusion VAEs written from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = commands.add_parser(
        "convert",
        help="convert a VAE checkpoint between naming schemes and file formats",
        description="Read any SD-family VAE (LDM/A1111/ComfyUI file, whole SD checkpoint, diffusers folder, "
        "our own file; .safetensors or a weights-only pickle) and write it as a diffusers folder, an LDM "
        "single file or our scratch file, always as safetensors.",
    )
    convert.add_argument("input", help="checkpoint file or diffusers model folder")
    convert.add_argument("output", help="output folder (--to diffusers) or .safetensors file (--to ldm/scratch)")
    convert.add_argument("--to", required=True, choices=["diffusers", "ldm", "scratch"], help="output naming scheme")
    convert.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None, help="cast weights on output")
    convert.set_defaults(handler=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, PermissionError, NotADirectoryError) as error:
        # bad input: one clear line, not a traceback
        print(f"sd-custom-vae {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
