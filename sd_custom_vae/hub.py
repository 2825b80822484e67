"""Push a VAE (or a whole training run) to the Hugging Face Hub as a complete model repository.

The repo holds a stock diffusers ``AutoencoderKL`` folder (``config.json`` + safetensors), so anyone can
load it with plain diffusers, and/or an LDM single file for A1111/ComfyUI, plus a model card with
metadata, metrics and the reconstruction grid. Everything is staged in a temporary folder: the
user's files are only read. The token is passed to huggingface_hub and never printed or written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

import conversion

from . import run_files
from .autoencoder_kl import CustomAutoencoderKL
from .loading import existing_path, load_vae
from .model_card import build_model_card

FORMATS = ("diffusers", "ldm", "both")


class HubAuthError(RuntimeError):
    """No token to write to the Hub with."""


@dataclass
class PushResult:
    repo_id: str
    commit_url: str
    files: list[str]

    def __str__(self) -> str:
        return f"pushed {', '.join(self.files)} to {self.repo_id} ({self.commit_url})"


def check_repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid repo id {repo_id!r}: {error}") from None
    return repo_id


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {FORMATS}")
    return format


def check_push(repo_id: str, format: str, token: str | None) -> str:
    """Everything a push can be refused for before any weights are read or requests sent; returns the token."""
    check_repo_id(repo_id)
    check_format(format)
    return resolve_token(token)


def resolve_token(token: str | None = None) -> str:
    token = token or get_token()  # HF_TOKEN, then the token `hf auth login` stored
    if not token:
        raise HubAuthError(
            "no Hugging Face token found: run `hf auth login` (or `huggingface-cli login`), "
            "or set the HF_TOKEN environment variable to a token with write access"
        )
    return token


def stage_repo(
    vae: CustomAutoencoderKL,
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
    checkpoint = conversion.to_scratch(vae.state_dict(), config, source=type(vae).__name__)
    written = []
    if format in ("diffusers", "both"):
        conversion.save_checkpoint(checkpoint, folder, to="diffusers")
        written += [conversion.CONFIG_NAME, f"{conversion.WEIGHTS_NAME}.safetensors"]
    ldm_file = None
    if format in ("ldm", "both"):
        ldm_file = f"{repo_id.split('/')[-1]}.safetensors"
        conversion.save_checkpoint(checkpoint, folder / ldm_file, to="ldm")
        written.append(ldm_file)
    grid = None
    if reconstructions is not None and Path(reconstructions).is_file():
        grid = run_files.RECONSTRUCTIONS
        shutil.copyfile(reconstructions, folder / grid)
        written.append(grid)
    card = build_model_card(
        repo_id, config, vae.num_parameters(), metrics, has_diffusers=format != "ldm", ldm_file=ldm_file,
        reconstructions=grid, license=license,
    )
    card.save(folder / "README.md")
    return [*written, "README.md"]


def push_vae(
    vae: CustomAutoencoderKL,
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
    """Create `repo_id` if needed and upload `vae` with its model card in one commit."""
    api = HfApi(token=check_push(repo_id, format, token))
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="sd-custom-vae-push-") as tmp:
        files = stage_repo(vae, Path(tmp), repo_id, format, metrics, reconstructions, license)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=commit_message or "Upload VAE with sd-custom-vae",
            create_pr=create_pr,
        )
    return PushResult(repo_id, commit.commit_url, files)


def push_run(source: str | os.PathLike, repo_id: str, **kwargs) -> PushResult:
    """Push a training run folder (its ``model/``, ``metrics.json`` and ``reconstructions.png``), a model
    folder (ours or a stock ``AutoencoderKL``) or a single checkpoint file."""
    path = existing_path(source)
    run = path if (path / run_files.MODEL_DIR / conversion.CONFIG_NAME).is_file() else None
    if run is None and path.name == run_files.MODEL_DIR and (path.parent / run_files.METRICS).is_file():
        run = path.parent  # the model folder of a run: its metrics and grid belong on the card too
    model_path = run / run_files.MODEL_DIR if run is not None else path
    if model_path.is_dir() and not (model_path / conversion.CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{path}: neither a training run (no {run_files.MODEL_DIR}/{conversion.CONFIG_NAME}) "
            f"nor a model folder (no {conversion.CONFIG_NAME})"
        )
    kwargs["token"] = check_push(repo_id, kwargs.get("format", "diffusers"), kwargs.get("token"))
    metrics = None
    if run is not None and (run / run_files.METRICS).is_file():
        metrics = json.loads((run / run_files.METRICS).read_text())
    grid = run / run_files.RECONSTRUCTIONS if run is not None else None
    return push_vae(load_vae(model_path), repo_id, metrics=metrics, reconstructions=grid, **kwargs)
