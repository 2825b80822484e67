"""Writing files without losing what a user already has: shared by every command that writes.

- Nothing existing is replaced unless the caller says so (``overwrite``); the refusal names the path
  and the flag that allows it.
- A file is written to a temporary name in its folder and renamed into place: a failure (disk full,
  Ctrl-C) leaves the previous file, never half of a new one. The new file gets the usual permissions
  (0666 less the umask), not the temporary file's 0600.
- A folder of several files (a diffusers model) is written beside the target and swapped in as a
  whole, so no reader ever sees new weights with an old config.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


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


def check_new(path: str | os.PathLike, overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """`path` may be written: it does not exist yet, or `overwrite` says to replace it (and it is writable)."""
    path = check_writable(path)
    if path.exists() and not overwrite:
        kind = "folder" if path.is_dir() else "file"
        raise FileExistsError(f"{path} already exists ({kind}): pass {flag} to replace it, or choose another output")
    return path


def _default_mode(folder: bool = False) -> int:
    """What open() or mkdir() would have given: 0666 (0777 for a folder) less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _temporary_prefix(path: Path) -> str:
    """A hidden name beside `path` that says whose it is, short enough for any file name that is itself valid
    (255 bytes), whatever `path`'s length."""
    return f".{path.name[:64]}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_writable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block succeeds it becomes `path`, replacing an
    existing one as a whole (only with `overwrite`). On failure the staging folder goes and `path` is untouched."""
    path = check_new(path, overwrite)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".new", dir=path.parent))
    try:
        yield staging
        os.chmod(staging, _default_mode(folder=True))
        if path.exists():
            # Two renames: there is always a complete folder on disk, the old one or the new one.
            retired = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".old", dir=path.parent))
            os.rename(path, retired / path.name)
            os.rename(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _finite(value):
    """`value` with every NaN or infinite number as null: JSON has no such numbers, and a reader would choke."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; a malformed file is a ValueError naming the file and line."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
