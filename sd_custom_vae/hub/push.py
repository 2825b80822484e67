"""Push a training run (or any VAE a user names) to the Hugging Face Hub: the job behind ``sd-custom-vae push``.

The repository itself (stock diffusers folder, LDM file, model card) is built by ``models.hub_repo``; this adds
what a run folder holds beside its model: the metrics and the reconstruction grid, for the model card.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..base.errors import UserError
from ..base.files import read_json
from ..models import load_vae
from ..models.hub_repo import PushResult, push_token, push_vae
from ..models.run_layout import METRICS_FILE, RECONSTRUCTIONS
from ..models.sources import resolve


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


def push_run(source: str | os.PathLike, repo_id: str, subfolder: str | None = None, **kwargs) -> PushResult:
    """Push a training run folder (its ``model/``, ``metrics.json`` and ``reconstructions.png``), a model
    folder (ours or a stock ``AutoencoderKL``), a pipeline folder (its ``vae/``), a single checkpoint file,
    or a VAE on the Hub (``ORG/NAME[@REVISION]``, with `subfolder`)."""
    location = resolve(source, subfolder)
    kwargs["token"] = push_token(repo_id, kwargs.get("format", "diffusers"), kwargs.get("token"))
    metrics = grid = None
    if location.run is not None:
        if (metrics_file := _run_file(location.run, METRICS_FILE)) is not None:
            metrics = read_json(metrics_file)
        grid = _run_file(location.run, RECONSTRUCTIONS)
    return push_vae(load_vae(location.path), repo_id, metrics=metrics, reconstructions=grid, **kwargs)
