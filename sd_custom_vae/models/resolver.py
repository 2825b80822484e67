"""Which VAE a name means: the one resolver from what a user types (a path or a Hub name) to files on disk.

A name is a local path when it exists, or when it looks like one (``data.looks_like_a_path``: a missing
``runs/tiny`` beside an existing ``runs/`` is a typo, not a Hub repo). Otherwise it is a Hub name, read through
``huggingface_hub`` (its cache, its token handling, ``HF_HUB_OFFLINE``):

- ``ORG/NAME`` or ``ORG/NAME@REVISION``: a model repo; ``subfolder`` picks a folder inside it, and a
  whole pipeline's repo (``model_index.json``) means its ``vae/`` folder. Only that folder's config and
  weights are downloaded, never the rest of a pipeline.
- ``ORG/NAME/PATH/FILE.safetensors`` (or ``@REVISION`` after the name), or its address
  ``https://huggingface.co/ORG/NAME/blob/REVISION/PATH``: one file.

A folder then stands for the model inside it: a training run's ``model/``, a pipeline's ``vae/``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..conversion import CONFIG_NAME
from ..data import looks_like_a_path
from . import run_files

# The keyword arguments that say how to reach the Hub, as diffusers' from_pretrained takes them.
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
PIPELINE_INDEX = "model_index.json"
_URL = re.compile(r"^(?:https?://)?(?:huggingface\.co|hf\.co)/(?P<repo>[^/]+/[^/@]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<path>.+)$")
_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/:]+))?(?:/(?P<path>.+))?$")


@dataclass(frozen=True)
class ModelLocation:
    path: Path  # a model folder (config.json and weights) or a checkpoint file
    run: Path | None = None  # the training run the model belongs to: its metrics and pictures are there


def parse_hub_name(name: str) -> tuple[str, str | None, str | None] | None:
    """(repo id, revision or None, path inside the repo or None) for a Hub name, or None if it is not one."""
    for pattern in (_URL, _REPO):
        match = pattern.match(name)
        if match:
            return match.group("repo"), match.group("revision"), match.group("path")
    return None


def _hub_kwargs(options: dict, revision: str | None) -> dict:
    # proxies: diffusers accepts them, huggingface_hub 1.x configures them through its HTTP client instead
    kwargs = {k: v for k, v in options.items() if k in HUB_OPTIONS and k != "proxies" and v is not None}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def locate(name: str | os.PathLike, subfolder: str | None = None, **hub_options) -> Path:
    """A local file or folder holding what `name` names (see the module docstring), before any folder is looked into."""
    path = Path(name)
    if path.exists():
        return path / subfolder if subfolder else path
    parsed = None if looks_like_a_path(str(name)) else parse_hub_name(str(name))
    if parsed is None:
        raise FileNotFoundError(
            f"no such VAE file or folder: {name}: no such checkpoint on disk, and not a Hub name (ORG/NAME[@REVISION])"
        )
    repo_id, revision, inner = parsed
    kwargs = _hub_kwargs(hub_options, revision)
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        if inner is not None and Path(inner).suffix:
            return Path(hf_hub_download(repo_id, inner, subfolder=subfolder, **kwargs))
        folder = "/".join(p for p in (inner, subfolder) if p)
        if not folder:
            try:  # a whole pipeline's repo: its VAE is in vae/
                hf_hub_download(repo_id, PIPELINE_INDEX, **kwargs)
                folder = "vae"
            except EntryNotFoundError:
                pass
        prefix = f"{folder}/" if folder else ""
        for weights in ("*.safetensors", "*.bin"):
            root = snapshot_download(repo_id,
                                     allow_patterns=[f"{prefix}config.json", f"{prefix}{weights}", f"{prefix}*.json"],
                                     **kwargs)
            local = Path(root, folder) if folder else Path(root)
            if any(local.glob(weights)):
                return local
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(
            f"no such VAE file or folder: {name}, and the Hub has no {repo_id}"
            f"{'@' + revision if revision else ''} ({type(error).__name__})"
        ) from None
    raise FileNotFoundError(f"{name}: the Hub repo has no VAE weights in {folder or 'its root'}")


def resolve(name: str | os.PathLike, subfolder: str | None = None, **hub_options) -> ModelLocation:
    """The model `name` means (see the module docstring): a run's ``model/``, a pipeline's ``vae/``, a model
    folder or a checkpoint file. A folder that is none of these is an error naming what it lacks."""
    path = locate(name, subfolder, **hub_options)
    if (path / run_files.MODEL_DIR / CONFIG_NAME).is_file():
        return ModelLocation(path / run_files.MODEL_DIR, run=path)
    if (path / PIPELINE_INDEX).is_file() and (path / "vae").is_dir():
        path = path / "vae"
    if path.is_dir() and not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{path}: a folder with no {CONFIG_NAME}: neither a training run (no {run_files.MODEL_DIR}/"
            f"{CONFIG_NAME}), a pipeline (no vae/) nor a VAE model folder"
        )
    # the model folder of a run: its metrics and pictures belong with it
    run = path.parent if path.name == run_files.MODEL_DIR and (path.parent / run_files.METRICS_FILE).is_file() else None
    return ModelLocation(path, run)
