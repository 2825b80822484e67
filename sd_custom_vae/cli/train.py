"""sd-custom-vae train [--data DIR] [--output DIR] [--config preset|yaml] [--steps N] ... : the main job.

One flag per ``TrainConfig`` field, built from the field: its name, type, choices, help text and section (one
group of ``--help`` each), with the default preset's value shown as what the flag's absence gives.
A flag overrides the preset or config file only when it is given.
"""

from __future__ import annotations

import argparse
import typing


def _flag_type(annotation) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _one_of(choices: tuple, renamed: dict):
    """An argument type taking one of `choices` or an old spelling of one, which is passed on as it is:
    ``load_config`` translates it with the deprecation warning. Only `choices` are listed (``--help``, errors)."""

    def value(text: str) -> str:
        if text in choices or text in renamed:
            return text
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")

    return value


def _shown(value) -> str | None:
    """How --help shows a preset's value; None where it shows none (an unset option, whose help says what that
    means, and an off switch)."""
    if value is None or value is False:
        return None
    return "on" if value is True else format(value, "g") if isinstance(value, float) else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per TrainConfig field that has one, in one group per section; returns each field's group."""
    from ..training.config import DEFAULT_PRESET, TrainConfig, sections
    from ..training.presets import PRESETS

    hints = typing.get_type_hints(TrainConfig)
    groups = {}
    for title, fields in sections().items():
        fields = [f for f in fields if f.metadata["flag"]]
        group = parser.add_argument_group(title) if fields else None
        for f in fields:
            rules = f.metadata
            flags = [f"--{f.name.replace('_', '-')}", *rules["aliases"]]
            shown = _shown(getattr(PRESETS[DEFAULT_PRESET], f.name))
            # the parser's defaults stay None (a flag overrides only when given): the value shown is the preset's
            help = rules["help"] + (f" (default: {shown}, from the {DEFAULT_PRESET} preset)" if shown else "")
            kind = _flag_type(hints[f.name])
            if kind is bool:
                group.add_argument(*flags, dest=f.name, action="store_true", default=None, help=help)
            elif rules["choices"]:
                group.add_argument(*flags, dest=f.name, type=_one_of(rules["choices"], rules["renamed"]), help=help,
                                   metavar="{" + ",".join(rules["choices"]) + "}")
            else:
                group.add_argument(*flags, dest=f.name, type=kind, help=help)
            groups[f.name] = group
    return groups


def register(subparsers) -> None:
    from ..training.config import DEFAULT_PRESET
    from ..training.presets import PRESETS

    parser = subparsers.add_parser(
        "train",
        help=f"train a VAE (the main job; with no arguments: the {DEFAULT_PRESET} preset on the built-in photos)",
        description="Train a ScratchVAE and export a CustomAutoencoderKL folder ready for vae=. "
        f"With no arguments it trains the {DEFAULT_PRESET} preset on photos that installed packages ship, in minutes "
        "on a CPU.",
    )
    start = parser.add_argument_group(
        "where the values start", "a preset, a file or a saved run; each flag below overrides what it sets"
    )
    start.add_argument("--config", default=None,
                       help=f"preset ({', '.join(PRESETS)}) or a YAML/JSON file of TrainConfig fields "
                       f"(default: {DEFAULT_PRESET})")
    start.add_argument(
        "--resume", nargs="?", const=True, default=None, metavar="RUN_OR_CHECKPOINT",
        help="continue a run exactly: its folder (latest checkpoint) or one checkpoint folder; "
        "alone, the --output run. Its saved configuration is used; flags given here override it (e.g. --steps).",
    )
    groups = add_config_flags(parser)
    parser.set_defaults(config_fields=list(groups))
    groups["output"].add_argument("--overwrite", action="store_true",
                                  help="replace an existing --output folder as a whole")
    groups["output"].add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def resolve_config(args: argparse.Namespace):
    """The run's TrainConfig: the preset or file, then the flags given. Resuming starts from the run's saved
    configuration instead (unless --config names another, which must then describe the same network)."""
    from ..models.run_files import TRAIN_CONFIG
    from ..training.checkpoints import resumed_run
    from ..training.config import DEFAULT_PRESET
    from ..training.presets import load_config, read_config_file

    overrides = {name: getattr(args, name) for name in args.config_fields if getattr(args, name, None) is not None}
    if not args.resume:
        return load_config(args.config, **overrides)
    run = resumed_run(args.resume, args.output)
    overrides.setdefault("output", str(run))
    if args.config is not None:
        return load_config(args.config, **overrides)
    saved = run / TRAIN_CONFIG
    if not saved.exists():
        raise FileNotFoundError(f"cannot resume: {saved} does not exist (is {run} a training run folder?)")
    values = read_config_file(saved)
    return load_config(values.pop("preset", DEFAULT_PRESET), **{**values, **overrides})


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import train

    config = resolve_config(args)
    result = train(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    metrics = result.metrics
    if not result.main_process:
        return 0
    print(
        f"trained {result.steps} steps: validation PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}\n"
        f"run folder: {result.output} (model/ is ready for vae=; see reconstructions.png and loss_curve.png)"
    )
    return 0
