"""Where a model a user names lives: a local path, or files on the Hugging Face Hub brought into its cache.

A name is tried as a local path first, then as a Hub name, read through ``huggingface_hub`` (its cache,
its token handling, ``HF_HUB_OFFLINE``):

- ``ORG/NAME`` or ``ORG/NAME@REVISION``: a model repo; ``subfolder`` picks a folder inside it, and a
  whole pipeline's repo (``model_index.json``) means its ``vae/`` folder. Only that folder's config and
  weights are downloaded, never the rest of a pipeline.
- ``ORG/NAME/PATH/FILE.safetensors`` (or ``@REVISION`` after the name), or its address
  ``https://huggingface.co/ORG/NAME/blob/REVISION/PATH``: one file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Keyword arguments that say how to reach the Hub, passed through to huggingface_hub.
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
PIPELINE_INDEX = "model_index.json"
_URL = re.compile(r"^(?:https?://)?(?:huggingface\.co|hf\.co)/(?P<repo>[^/]+/[^/@]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<path>.+)$")
_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/:]+))?(?:/(?P<path>.+))?$")


def parse_hub_name(name: str) -> tuple[str, str | None, str | None] | None:
    """(repo id, revision or None, path inside the repo or None) for a Hub name, or None if it is not one."""
    for pattern in (_URL, _REPO):
        match = pattern.match(name)
        if match:
            return match.group("repo"), match.group("revision"), match.group("path")
    return None


def _hub_kwargs(options: dict, revision: str | None) -> dict:
    kwargs = {k: v for k, v in options.items() if k in HUB_OPTIONS and v is not None}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def locate(name: str | os.PathLike, subfolder: str | None = None, **hub_options) -> Path:
    """A local file or folder holding what `name` names (see the module docstring)."""
    path = Path(name)
    if path.exists():
        return path / subfolder if subfolder else path
    parsed = parse_hub_name(str(name))
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
            root = snapshot_download(repo_id, allow_patterns=[f"{prefix}config.json", f"{prefix}{weights}", f"{prefix}*.json"],
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
