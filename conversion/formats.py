"""Checkpoint files in and out.

In: ``.safetensors``; ``.ckpt``/``.pt``/``.pth``/``.bin`` pickles, read only with
``torch.load(weights_only=True)``; a diffusers model folder (``config.json`` + weights, plain,
``.fp16`` variant or sharded). Out: safetensors only, always written to a temporary name in the
target folder and renamed into place, so a failed write never leaves a half file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHTS_NAME = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "sd_custom_vae.config"


def read_checkpoint(path: str | os.PathLike, variant: str | None = None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read tensors from a file or a diffusers model folder. Returns (state dict, stored config or None).

    The config is the folder's ``config.json`` or, for a safetensors file this project wrote, the
    one in its metadata.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint file or folder: {path}")
    if path.is_dir():
        return _read_folder(path, variant)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path), None
    raise ValueError(
        f"{path}: unrecognised checkpoint extension {path.suffix!r}; expected .safetensors, "
        f"{', '.join(PICKLE_SUFFIXES)} or a diffusers model folder"
    )


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or another format?): {error}") from error
    config = json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    return tensors, config


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on garbage input
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            unsupported = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
            raise ValueError(
                f"{path}: refused to load: this pickle needs code beyond plain tensors and containers, and "
                "pickles are only read with weights_only=True (which cannot run code). Convert it to safetensors "
                f"in an environment you trust. {unsupported}"
            ) from error
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {type(error).__name__}: {error}"
        ) from error
    # Lightning and LDM training checkpoints keep the weights under "state_dict".
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found a {type(loaded).__name__}")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors (top-level keys: {list(loaded)[:5]})")
    return tensors


def _read_folder(folder: Path, variant: str | None) -> tuple[dict[str, torch.Tensor], dict | None]:
    config_path = folder / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"{folder} is a folder but has no {CONFIG_NAME}: not a diffusers model folder")
    config = json.loads(config_path.read_text())
    # Without a variant, plain weights first, then the ".fp16" files many Hub repos ship alone.
    suffixes = [f".{variant}"] if variant else ["", ".fp16"]
    for suffix in suffixes:
        for ext in (".safetensors", ".bin"):
            single = folder / f"{WEIGHTS_NAME}{suffix}{ext}"
            index = folder / f"{WEIGHTS_NAME}{suffix}{ext}.index.json"
            if single.exists():
                return read_checkpoint(single)[0], config
            if index.exists():
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                tensors: dict[str, torch.Tensor] = {}
                for shard in shards:
                    tensors.update(read_checkpoint(folder / shard)[0])
                return tensors, config
    raise FileNotFoundError(f"{folder}: found {CONFIG_NAME} but no {WEIGHTS_NAME}*.safetensors or .bin weights")


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if `path` cannot be written."""
    path = Path(path)
    parent = path.parent if path.parent != Path("") else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: folder {existing} is not writable")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {path}: the folder is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, config: dict | None = None) -> Path:
    metadata = {"format": "pt"}
    if config is not None:
        metadata[CONFIG_METADATA_KEY] = json.dumps(config)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def write_model_folder(state_dict: dict[str, torch.Tensor], config: dict, folder: str | os.PathLike) -> Path:
    """A diffusers-style model folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``."""
    folder = check_writable(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} exists and is a file; a diffusers model is a folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(state_dict, folder / f"{WEIGHTS_NAME}.safetensors")
    write_json(config, folder / CONFIG_NAME)
    return folder
