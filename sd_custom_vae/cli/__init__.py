"""The ``sd-custom-vae`` command line: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__

# In the order `--help` lists them. Each module defines register(subparsers) and sets a handler.
COMMANDS = ["train", "convert", "generate", "calibrate", "eval", "push"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd-custom-vae",
        description="Train, convert, evaluate and share Stable Diffusion VAEs written from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
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
