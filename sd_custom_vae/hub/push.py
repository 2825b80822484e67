"""Push a training run (or any VAE a user names) to the Hugging Face Hub: the job behind ``sd-custom-vae push``.

The repository itself (stock diffusers folder, LDM file, model card) is built by ``models.hub_repo``; this adds
what a run folder holds beside its model: the metrics and the reconstruction grid, for the model card.
"""

from __future__ import annotations

import os

import conversion

from ..models import load_vae
from ..models.hub_repo import PushResult, push_token, push_vae
from ..models.run_layout import METRICS, RECONSTRUCTIONS
from ..models.sources import resolve


def push_run(source: str | os.PathLike, repo_id: str, subfolder: str | None = None, **kwargs) -> PushResult:
    """Push a training run folder (its ``model/``, ``metrics.json`` and ``reconstructions.png``), a model
    folder (ours or a stock ``AutoencoderKL``), a pipeline folder (its ``vae/``), a single checkpoint file,
    or a VAE on the Hub (``ORG/NAME[@REVISION]``, with `subfolder`)."""
    location = resolve(source, subfolder)
    kwargs["token"] = push_token(repo_id, kwargs.get("format", "diffusers"), kwargs.get("token"))
    metrics = grid = None
    if location.run is not None:
        if (location.run / METRICS).is_file():
            metrics = conversion.read_json(location.run / METRICS)
        grid = location.run / RECONSTRUCTIONS
    return push_vae(load_vae(location.path), repo_id, metrics=metrics, reconstructions=grid, **kwargs)
