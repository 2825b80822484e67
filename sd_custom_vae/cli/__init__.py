"""Layer 7, the ``sd-custom-vae`` command line: one module per subcommand, each with ``register(subparsers)``.

Whatever goes wrong reaches the user as one line (what is wrong, where, what to do) and an exit
code: 2 for bad input, 1 for a failure outside it (the Hub, the disk, a bug), 130 for Ctrl-C, 143 for a
SIGTERM and 129 for a SIGHUP (a closed terminal), which, like Ctrl-C, let every half-written output be
removed. Set ``SD_CUSTOM_VAE_TRACEBACK=1`` to see the traceback instead. Everything printed, argparse's own
messages included, passes through ``redact``: no token reaches the terminal, whoever wrote the text (a mistyped
argument, a server's echo).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import itertools
import os
import signal
import sys
import warnings

from .. import __version__
from ..base.errors import UserError
from .redact import Redacting, known_secrets, redact, redacting_logs

# In the order `--help` lists them. Each module defines register(subparsers) and sets a handler.
COMMANDS = ["train", "convert", "generate", "calibrate", "eval", "fp16-fix", "push"]


class Parser(argparse.ArgumentParser):
    """argparse's parser (each subcommand's too), whose errors are one line, as every other bad input's: what is
    wrong and where to read more, not the usage of every option first."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sd-custom-vae",
        description="Train, convert, evaluate and share Stable Diffusion VAEs written from scratch.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}").register(subparsers)
    return parser


def add_model_argument(parser: argparse.ArgumentParser, name: str, what: str = "the VAE", **kwargs) -> None:
    """A VAE named as every command names one (``models/resolver.py``), and --subfolder to reach inside its folder."""
    parser.add_argument(name, help=f"{what}: a model, run or pipeline folder, a checkpoint file, or a Hub name "
                        "ORG/NAME[@REVISION]", **kwargs)
    parser.add_argument("--subfolder", default=None, help="folder of the VAE inside its folder or Hub repo")


def add_output_flags(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """--output (`what` it names) and --overwrite, which alone lets an existing one be replaced, as a whole."""
    parser.add_argument("--output", default=default, help=what + (f" (default {default})" if default else ""))
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output, as a whole, atomically")


def add_data_flags(parser: argparse.ArgumentParser, default_help: str) -> None:
    """--data and how to read it: the same flags, meaning the same thing, in eval, calibrate and fp16-fix (train
    builds its own from TrainConfig, with the same names)."""
    parser.add_argument("--data", default=None, help="image folder, 🤗 dataset (Hub ORG/NAME, save_to_disk folder, "
                        f"parquet/arrow files) or WebDataset shards (path, glob, {{000..099}} pattern); {default_help}")
    parser.add_argument("--data-split", default="train", help="split of a 🤗 dataset (default train)")
    parser.add_argument("--data-revision", default=None, help="revision of a Hub dataset")
    parser.add_argument("--image-column", default=None,
                        help="dataset column holding the images (default: the Image one)")
    parser.add_argument("--streaming", action="store_true", help="stream a 🤗 dataset rather than download it whole")


def data_options(args: argparse.Namespace):
    from ..data import DataOptions

    return DataOptions(args.data_split, args.data_revision, args.image_column, args.streaming)


def positive(flag: str, value: int | float | None, minimum: float = 1) -> None:
    """Refuse a number option below `minimum`, naming the flag."""
    if value is not None and not value >= minimum:
        raise UserError(f"{flag} must be at least {minimum:g}, got {value}")


def add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, whose default is what ``pick_device`` picks."""
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1, mps (default: cuda, then mps, then cpu: the first this machine has)")


def pick_device(requested: str | None) -> str:
    """The device a command runs on: `requested` if this machine has it, else cuda, mps or cpu, the first available."""
    import torch

    if requested is None:
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }.get(device.type, False)
    if not available:
        raise UserError(f"--device {requested}: this machine has no such device; use --device cpu (or leave it out)")
    return requested


def describe(error: BaseException) -> tuple[str, int]:
    """(one line for the user, exit code) for an error a command raised."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f" while writing {error.filename}" if error.filename else ""
        return f"disk full{where}: free some space and run the command again (files that were there are unchanged)", 1
    if isinstance(error, HfHubHTTPError):
        return (
            f"the upload failed: {error}; your local files are unchanged: run the same command again to retry "
            "(files already on the Hub are skipped)", 1,
        )
    if type(error).__module__.startswith(("httpx", "requests", "urllib3")) or isinstance(error, TimeoutError):
        return (
            f"cannot reach the Hugging Face Hub ({type(error).__name__}: {error}); check the network and HF_ENDPOINT",
            1,
        )
    if isinstance(error, (UserError, OSError)):  # bad input, or a file the system refused: the user can fix it
        return str(error) or type(error).__name__, 2
    from ..training import TrainingDiverged

    if isinstance(error, TrainingDiverged):
        return str(error), 1
    return (
        f"unexpected {type(error).__name__}: {error} (a bug: please report it; set SD_CUSTOM_VAE_TRACEBACK=1 "
        "to see where it happened)", 1,
    )


# the signals that end a command as Ctrl-C does; SIGHUP is what closing the terminal (or an ssh session) sends
STOPPING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Terminated(Exception):
    """SIGTERM or SIGHUP, raised where the process is, so that every ``finally`` (temporary files) runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


def _stop_cleanly_on_signals(stack: contextlib.ExitStack) -> None:
    """Turn STOPPING into ``Terminated`` until `stack` closes. A signal the user set to be ignored stays so:
    ``nohup sd-custom-vae train ...`` means a closed terminal must not stop the run."""
    if not _main_thread():  # only the main thread may set handlers (a notebook's worker thread: left as it is)
        return
    for signum in STOPPING:
        previous = signal.getsignal(signum)
        if previous == signal.SIG_IGN:
            continue
        signal.signal(signum, _terminate)
        stack.callback(signal.signal, signum, signal.SIG_DFL if previous is None else previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    given = [value for flag, value in itertools.pairwise(argv) if flag == "--token"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--token=")]
    secrets = known_secrets(*given)
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show "→" gets "?", not an error after the work
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="replace")
    with contextlib.ExitStack() as stack:
        # redaction first: argparse prints what a user typed (a token in the wrong place) before any command runs
        stack.enter_context(contextlib.redirect_stdout(Redacting(sys.stdout, secrets)))
        stack.enter_context(contextlib.redirect_stderr(Redacting(sys.stderr, secrets)))
        stack.enter_context(redacting_logs(secrets))
        stack.callback(setattr, warnings, "formatwarning", warnings.formatwarning)
        # a warning is one line, as errors are: no source line that reads like a traceback. Set before the
        # arguments are read, as an old spelling of a value warns there (convert --to scratch)
        where = f"sd-custom-vae {argv[0]}" if argv and argv[0] in COMMANDS else "sd-custom-vae"
        warnings.formatwarning = lambda message, category, *_: f"{where}: warning: {message}\n"
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        _stop_cleanly_on_signals(stack)
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            print(f"sd-custom-vae {args.command}: interrupted", file=sys.stderr)
            return 130
        except Terminated as stop:
            print(f"sd-custom-vae {args.command}: terminated ({stop}); nothing half-written was left", file=sys.stderr)
            return 128 + stop.signum
        except Exception as error:  # noqa: BLE001 - the one place every failure is turned into one line
            if os.environ.get("SD_CUSTOM_VAE_TRACEBACK"):
                raise
            message, code = describe(error)
            print(f"sd-custom-vae {args.command}: error: {redact(message, secrets)}", file=sys.stderr)
            return code


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
