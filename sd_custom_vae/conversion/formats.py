"""Checkpoint files in and out.

In: ``.safetensors``; ``.ckpt``/``.pt``/``.pth``/``.bin`` pickles, read only with
``torch.load(weights_only=True)``; a diffusers model folder (``config.json`` + weights, plain,
``.fp16`` variant or sharded). Out: safetensors only, always written to a temporary name in the
target folder and renamed into place, so a failed write never leaves a half file behind.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..base.errors import UserError
from ..base.files import atomic_folder, atomic_path, read_json, write_json

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
WEIGHTS_NAME = "diffusion_pytorch_model"
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "sd_custom_vae.config"


def read_checkpoint(path: str | os.PathLike, variant: str | None = None) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read tensors from a file or a diffusers model folder, as they are stored (no renaming, no check).

    Args:
        path: A ``.safetensors`` file, a pickle (``.ckpt``/``.pt``/``.pth``/``.bin``, read with
            ``weights_only=True``) or a model folder (plain, a variant, or sharded).
        variant: The weights variant of a model folder (``fp16`` reads ``*.fp16.safetensors``).

    Returns:
        The state dict, and the stored config or None: the folder's ``config.json`` or, for a safetensors file
        this project wrote, the one in its metadata.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint file or folder: {path}")
    if path.is_dir():
        return _read_folder(path, variant)
    if not path.is_file():  # reading a named pipe would wait forever, a device read without end
        raise UserError(f"{path} is not a regular file (a named pipe, a socket or a device): give a checkpoint file")
    # The content decides (a safetensors file renamed .ckpt is still safetensors); the suffix only says
    # what a file of neither kind was meant to be, for the error.
    kind = sniff(path) or {".safetensors": "safetensors", **dict.fromkeys(PICKLE_SUFFIXES, "pickle")}.get(path.suffix)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind == "pickle":
        return _read_pickle(path), None
    raise UserError(
        f"{path}: unrecognised checkpoint extension {path.suffix!r}; expected .safetensors, "
        f"{', '.join(PICKLE_SUFFIXES)} or a diffusers model folder"
    )


def sniff(path: Path) -> str | None:
    """"safetensors" or "pickle" from a file's first bytes, or None for neither."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path):
        return "safetensors"  # an 8-byte header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "pickle"  # torch.save's zip archive, or a bare pickle
    return None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(f"{path}: not a readable safetensors file (truncated or another format?): {error}") from error
    try:
        config = json.loads(metadata[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in metadata else None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: the config in its metadata is not valid JSON ({error.msg})") from None
    if config is not None and not isinstance(config, dict):
        raise UserError(f"{path}: the config in its metadata is a JSON {type(config).__name__}, not an object of "
                         "key: value; the file was not written by sd-custom-vae, or was altered")
    return tensors, config


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on garbage input
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            unsupported = next((line.strip() for line in str(error).splitlines() if "Unsupported global" in line), "")
            raise UserError(
                f"{path}: refused to load: this pickle needs code beyond plain tensors and containers, and "
                "pickles are only read with weights_only=True (which cannot run code). Convert it to safetensors "
                f"in an environment you trust. {unsupported}"
            ) from error
        raise UserError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format?): {type(error).__name__}: {error}"
        ) from error
    # Lightning and LDM training checkpoints keep the weights under "state_dict".
    while isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a dict of tensors, found a {type(loaded).__name__}")
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors (top-level keys: {list(loaded)[:5]})")
    return tensors


def _read_folder(folder: Path, variant: str | None) -> tuple[dict[str, torch.Tensor], dict | None]:
    config_path = folder / CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"{folder} is a folder but has no {CONFIG_NAME}: not a diffusers model folder")
    config = read_json(config_path)
    # Without a variant, plain weights first, then the ".fp16" files many Hub repos ship alone.
    suffixes = [f".{variant}"] if variant else ["", ".fp16"]
    for suffix in suffixes:
        for ext in (".safetensors", ".bin"):
            single = folder / f"{WEIGHTS_NAME}{suffix}{ext}"
            index = folder / f"{WEIGHTS_NAME}{suffix}{ext}.index.json"
            if single.exists():
                return read_checkpoint(single)[0], config
            if index.exists():
                tensors: dict[str, torch.Tensor] = {}
                for shard in shard_files(index):
                    tensors.update(read_checkpoint(shard)[0])
                return tensors, config
    raise FileNotFoundError(f"{folder}: found {CONFIG_NAME} but no {WEIGHTS_NAME}*.safetensors or .bin weights")


def shard_files(index: Path) -> list[Path]:
    """The shard files a sharded folder's ``*.index.json`` names: files in that folder, nowhere else (as diffusers
    requires), so that an index cannot make a conversion read, and embed, any other file on the machine.

    Args:
        index: The ``*.index.json`` file.
    """
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: no weight_map of tensor names to shard files")
    shards = []
    for name in sorted(set(weight_map.values())):
        if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
            raise UserError(f"{index}: shard {name!r} is not a file name in the model's folder; a sharded folder's "
                             "weights are files beside its index")
        shards.append(index.parent / name)
    return shards


def write_safetensors(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, config: dict | None = None) -> Path:
    """Write one ``.safetensors`` file, atomically (to a temporary name beside it, then renamed into place).

    Args:
        state_dict: The tensors, written as they are (on the CPU, contiguous).
        path: The file to write.
        config: A config to record in the file's metadata, where ``read_checkpoint`` finds it.

    Returns:
        `path`.
    """
    metadata = {"format": "pt"}
    if config is not None:
        metadata[CONFIG_METADATA_KEY] = json.dumps(config)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as error:  # the writer's errors are its own type, errno lost: a full disk says so
            code = errno.ENOSPC if "No space left" in str(error) or "os error 28" in str(error) else errno.EIO
            raise OSError(code, f"cannot write {path}: {error}", str(path)) from error
    return Path(path)


def write_model_folder(
    state_dict: dict[str, torch.Tensor], config: dict, folder: str | os.PathLike, overwrite: bool = False
) -> Path:
    """A diffusers-style model folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``, written beside
    `folder` and swapped in as a whole.

    Args:
        state_dict: The tensors, under diffusers' names.
        config: The ``config.json`` to write (diffusers' keys).
        folder: The folder to write.
        overwrite: Replace an existing folder, as a whole; without it an existing one is refused.

    Returns:
        `folder`.
    """
    with atomic_folder(folder, overwrite) as staging:
        write_safetensors(state_dict, staging / f"{WEIGHTS_NAME}.safetensors")
        write_json(config, staging / CONFIG_NAME)
    return Path(folder)
