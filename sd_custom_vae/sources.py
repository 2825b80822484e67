"""Where a model a user names lives: a local path, or a file or folder on the Hugging Face Hub.

Hub names are read through ``huggingface_hub`` (its cache, its token handling, ``HF_HUB_OFFLINE``):
``ORG/NAME`` (a model repo), ``ORG/NAME@REVISION``, ``ORG/NAME/PATH/FILE.safetensors`` or its
``https://huggingface.co/ORG/NAME/blob/REVISION/PATH`` address. A local path always wins over a
Hub name that looks the same.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Keyword arguments that say how to reach the Hub, passed through to huggingface_hub.
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
_URL = re.compile(r"^(?:https?://)?(?:huggingface\.co|hf\.co)/(?P<repo>[^/]+/[^/@]+)/(?:blob|resolve)/(?P<revision>[^/]+)/(?P<path>.+)$")
_REPO = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/]+))?$")
_REPO_FILE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<revision>[^/]+))?/(?P<path>.+)$")


def parse_hub_name(name: str) -> tuple[str, str | None, str | None] | None:
    """(repo id, revision or None, path inside the repo or None) for a Hub name, or None if it is not one."""
    for pattern in (_URL, _REPO, _REPO_FILE):
        match = pattern.match(name)
        if match:
            groups = match.groupdict()
            return groups["repo"], groups.get("revision"), groups.get("path")
    return None


def _hub_kwargs(options: dict, revision: str | None) -> dict:
    kwargs = {k: v for k, v in options.items() if k in HUB_OPTIONS and k != "proxies" and v is not None}
    if revision is not None:
        kwargs.setdefault("revision", revision)
    return kwargs


def resolve_file(source: str | os.PathLike, **hub_options) -> Path:
    """A local path as given; a Hub file name downloaded into (or found in) the Hugging Face cache."""
    path = Path(source)
    if path.exists():
        return path
    parsed = parse_hub_name(str(source))
    if parsed is None or parsed[2] is None:
        raise FileNotFoundError(
            f"no such checkpoint file or folder: {source} (a file on the Hub is named ORG/NAME/FILE or by its URL)"
        )
    from huggingface_hub import hf_hub_download

    repo_id, revision, filename = parsed
    return Path(hf_hub_download(repo_id, filename, **_hub_kwargs(hub_options, revision)))
