"""A VAE as a complete Hugging Face Hub model repository, staged in a temporary folder and uploaded in one commit.

The repo holds a stock diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors), so anyone can
load it with plain diffusers, and/or an LDM single file for A1111/ComfyUI, plus a model card with
metadata, metrics and the reconstruction grid. The user's files are only read. The token is passed
to huggingface_hub and never printed or written.

After a push the repo's weights are exactly what was pushed: weight files and configs an earlier push (or the
user) left at the top of the repo, which a loader could pick up in place of the new ones, are deleted in the same
commit (and named). A push asked to be private never lands in a public repo.
"""

from __future__ import annotations

import glob
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..base.errors import UserError
from ..conversion import CONFIG_NAME, WEIGHTS_NAME, as_checkpoint, save_checkpoint
from . import run_files
from .model_card import build_model_card

FORMATS = ("diffusers", "ldm", "both")
# Seconds to wait for the Hub to connect and to answer: a Hub that never answers fails instead of hanging.
TIMEOUT_VARIABLE = "SD_CUSTOM_VAE_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 120.0


# what a loader reads at the top of a repo (diffusers, from_single_file, A1111/ComfyUI): left from an earlier
# push beside new weights, it would be loaded, or offered, in their place
LOADED_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".index.json")
LOADED_NAMES = (CONFIG_NAME, run_files.RECONSTRUCTIONS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class HubAuthError(UserError):
    """No token to write to the Hub with."""


@dataclass
class PushResult:
    repo_id: str
    commit_url: str
    files: list[str]
    removed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        removed = f"; removed {', '.join(self.removed)}, left by an earlier push" if self.removed else ""
        return f"pushed {', '.join(self.files)} to {self.repo_id} ({self.commit_url}){removed}"


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"invalid repo id {repo_id!r}: {error}") from None
    return repo_id


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}; expected one of {FORMATS}")
    return format


def push_token(repo_id: str, format: str, token: str | None) -> str:
    """The token to push with (`token`, HF_TOKEN, or the one `hf auth login` stored), after checking everything a
    push can be refused for before any weights are read or requests sent."""
    check_repo_id(repo_id)
    check_format(format)
    token = token or get_token()
    if not token:
        raise HubAuthError(
            "no Hugging Face token found: run `hf auth login` (or `huggingface-cli login`), "
            "or set the HF_TOKEN environment variable to a token with write access"
        )
    return token


def hub_timeout() -> float:
    """Seconds from $SD_CUSTOM_VAE_HUB_TIMEOUT (default 120), checked."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds: set it to a positive number, "
                         "e.g. 120, or unset it")
    return seconds


def use_hub_timeouts() -> None:
    """Make huggingface_hub's HTTP client give up on a Hub that does not answer within $SD_CUSTOM_VAE_HUB_TIMEOUT
    seconds (default 120; its own default waits forever). Process-wide: the command line calls it, a library
    user decides for their own process."""
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    seconds = hub_timeout()

    def client_with_timeouts():
        client = default_client_factory()
        # httpx's Timeout under huggingface_hub 1.x, httpx2's under 2.x: the client's own class either way
        client.timeout = type(client.timeout)(seconds, connect=min(seconds, 15.0))
        return client

    set_client_factory(client_with_timeouts)


def stage_repo(
    vae,
    folder: Path,
    repo_id: str,
    format: str = "diffusers",
    metrics: dict | None = None,
    reconstructions: str | os.PathLike | None = None,
    license: str = "apache-2.0",
) -> list[str]:
    """Write everything the repo should hold into `folder`; returns the repo paths written."""
    check_format(format)
    config = dict(vae.config)
    checkpoint = as_checkpoint(vae.state_dict(), config, source=type(vae).__name__)
    written = []
    if format in ("diffusers", "both"):
        save_checkpoint(checkpoint, folder, to="diffusers", overwrite=True)
        written += [CONFIG_NAME, f"{WEIGHTS_NAME}.safetensors"]
    ldm_file = None
    if format in ("ldm", "both"):
        ldm_file = f"{repo_id.split('/')[-1]}.safetensors"
        save_checkpoint(checkpoint, folder / ldm_file, to="ldm")
        written.append(ldm_file)
    grid = None
    if reconstructions is not None and Path(reconstructions).is_file():
        grid = run_files.RECONSTRUCTIONS
        image = Path(reconstructions).read_bytes()  # checked as read: what is checked is what is uploaded
        if not image.startswith(PNG_SIGNATURE):
            raise UserError(f"{reconstructions} is not a PNG image: push uploads it as the model card's "
                             f"{grid}; replace it with the run's own grid, or remove it")
        (folder / grid).write_bytes(image)
        written.append(grid)
    card = build_model_card(
        repo_id, config, vae.num_parameters(), metrics, has_diffusers=format != "ldm", ldm_file=ldm_file,
        reconstructions=grid, license=license,
    )
    card.save(folder / "README.md")
    return [*written, "README.md"]


def push_vae(
    vae,
    repo_id: str,
    *,
    format: str = "diffusers",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    metrics: dict | None = None,
    reconstructions: str | os.PathLike | None = None,
    license: str = "apache-2.0",
) -> PushResult:
    """Create `repo_id` if needed and upload `vae` (a ``CustomAutoencoderKL``) with its model card in one commit."""
    api = HfApi(token=push_token(repo_id, format, token))
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if private and not api.repo_info(repo_id).private:
        raise UserError(
            f"{repo_id} already exists and is public, and --private (private=True) only sets the visibility of a new "
            "repo: nothing was uploaded. Make the repo private on the Hub (its Settings) and push again, push to "
            "another repo, or leave --private out to publish publicly"
        )
    with tempfile.TemporaryDirectory(prefix="sd-custom-vae-push-") as tmp:
        files = stage_repo(vae, Path(tmp), repo_id, format, metrics, reconstructions, license)
        stale = [name for name in api.list_repo_files(repo_id)
                 if "/" not in name and name not in files and (name.endswith(LOADED_SUFFIXES) or name in LOADED_NAMES)]
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or "Upload VAE with sd-custom-vae",
            create_pr=create_pr,
            # exact names (escaped: patterns match whole paths), top-level only: a pipeline's unet/ is not ours
            delete_patterns=[glob.escape(name) for name in stale] or None,
        )
    return PushResult(repo_id, commit.commit_url, files, stale)
