"""Push a training run (or any VAE a user names) to the Hugging Face Hub: the job behind ``sd-custom-vae push``.

The repository itself (stock diffusers folder, LDM file, model card) is built by ``hub_upload``.
"""

from __future__ import annotations

import json
import os

import conversion

from . import run_files
from .hub_upload import FORMATS, HubAuthError, PushResult, push_token, push_vae, stage_repo  # noqa: F401 (public)
from .loading import load_vae
from .model_sources import locate


def push_run(source: str | os.PathLike, repo_id: str, subfolder: str | None = None, **kwargs) -> PushResult:
    """Push a training run folder (its ``model/``, ``metrics.json`` and ``reconstructions.png``), a model
    folder (ours or a stock ``AutoencoderKL``), a pipeline folder (its ``vae/``), a single checkpoint file,
    or a VAE on the Hub (``ORG/NAME[@REVISION]``, with `subfolder`)."""
    path = locate(source, subfolder)
    run = path if (path / run_files.MODEL_DIR / conversion.CONFIG_NAME).is_file() else None
    if run is None and path.name == run_files.MODEL_DIR and (path.parent / run_files.METRICS).is_file():
        run = path.parent  # the model folder of a run: its metrics and grid belong on the card too
    model_path = run / run_files.MODEL_DIR if run is not None else path
    if model_path.is_dir() and not (model_path / conversion.CONFIG_NAME).is_file() and not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path}: neither a training run (no {run_files.MODEL_DIR}/{conversion.CONFIG_NAME}), a pipeline "
            f"nor a model folder (no {conversion.CONFIG_NAME})"
        )
    kwargs["token"] = push_token(repo_id, kwargs.get("format", "diffusers"), kwargs.get("token"))
    metrics = None
    if run is not None and (run / run_files.METRICS).is_file():
        metrics = json.loads((run / run_files.METRICS).read_text())
    grid = run / run_files.RECONSTRUCTIONS if run is not None else None
    return push_vae(load_vae(model_path), repo_id, metrics=metrics, reconstructions=grid, **kwargs)
