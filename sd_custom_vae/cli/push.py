"""sd-custom-vae push RUN_OR_MODEL_DIR REPO_ID [--private] [--format diffusers|ldm|both] [--token TOKEN]

The repository itself (stock diffusers folder, LDM file, model card) is built by ``models.hub_repo``; ``push_run``
adds what a run folder holds beside its model: the metrics and the reconstruction grid, for the model card.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..base.errors import UserError
from ..base.files import read_json
from ..models import hub_repo
from ..models.hub_repo import FORMATS
from ..models.run_files import METRICS_FILE, RECONSTRUCTIONS
from . import add_model_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a trained VAE to the Hugging Face Hub with a model card",
        description="Upload a training run (its model, metrics and reconstruction grid) or a model folder to "
        "the Hub as a stock diffusers AutoencoderKL repo and/or an LDM single file, with a generated model "
        "card. The token comes from --token, HF_TOKEN or `hf auth login`, and is never printed or saved.",
    )
    add_model_argument(parser, "source", "the VAE to push", metavar="RUN_OR_MODEL_DIR")
    parser.add_argument("repo_id", metavar="REPO_ID", help="user-or-org/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0],
                        help="diffusers folder, LDM single file for A1111/ComfyUI, or both (default diffusers)")
    parser.add_argument("--token", default=None, help="Hub token (prefer HF_TOKEN or `hf auth login`)")
    parser.add_argument("--license", default="apache-2.0", help="license in the model card (default apache-2.0)")
    parser.add_argument("--commit-message", default=None)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    hub_repo.use_hub_timeouts()
    # a failed upload is reported by the command line's one-line handler: staging happens in a temporary
    # folder and a commit is all or nothing, so rerunning is always safe
    result = push_run(
        args.source, args.repo_id, subfolder=args.subfolder, format=args.format, private=args.private or None,
        token=args.token, commit_message=args.commit_message, license=args.license,
    )
    print(result)
    return 0


def _run_file(run: Path, name: str) -> Path | None:
    """`run`/`name` if the run holds it as its own file; None if it has none. A link to a file outside the run
    would upload that file's bytes, whoever's they are: refused."""
    path = run / name
    if not path.exists() and not path.is_symlink():
        return None
    if not path.resolve().is_relative_to(run.resolve()):
        raise UserError(f"{path} is a link to {path.resolve()}, outside the run: push uploads only the run's own "
                         "files; copy the file into the run, or remove the link")
    if not path.is_file():
        raise UserError(f"{path} is not a regular file: push uploads only the run's own files; remove it")
    return path


def push_run(source: str | os.PathLike, repo_id: str, subfolder: str | None = None, **kwargs) -> hub_repo.PushResult:
    """Push a training run folder (its ``model/``, ``metrics.json`` and ``reconstructions.png``), a model
    folder (ours or a stock ``AutoencoderKL``), a pipeline folder (its ``vae/``), a single checkpoint file,
    or a VAE on the Hub (``ORG/NAME[@REVISION]``, with `subfolder`)."""
    from ..models import load_vae
    from ..models.hub_repo import push_token, push_vae
    from ..models.resolver import resolve

    location = resolve(source, subfolder)
    kwargs["token"] = push_token(repo_id, kwargs.get("format", "diffusers"), kwargs.get("token"))
    metrics = grid = None
    if location.run is not None:
        if (metrics_file := _run_file(location.run, METRICS_FILE)) is not None:
            metrics = read_json(metrics_file)
        grid = _run_file(location.run, RECONSTRUCTIONS)
    return push_vae(load_vae(location.path), repo_id, metrics=metrics, reconstructions=grid, **kwargs)
