"""Writing files without losing what a user already has: shared by every command that writes.

- Nothing existing is replaced unless the caller says so (``overwrite``); the refusal names the path
  and the flag that allows it.
- A file is written to a temporary name in its folder and renamed into place: a failure (disk full,
  Ctrl-C) leaves the previous file, never half of a new one. The new file gets the usual permissions
  (0666 less the umask), not the temporary file's 0600.
- A folder of several files (a diffusers model) is written beside the target and swapped in as a
  whole, so no reader ever sees new weights with an old config: in one step where the system can
  (Linux's ``renameat2(RENAME_EXCHANGE)``), else in two renames that Ctrl-C, SIGTERM and SIGHUP wait for.
- A symbolic link, a named pipe, a socket or a device is never written through or replaced: a command
  that writes only creates or replaces regular files and folders.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

# what a swap of two folders must not be parted by: each would end the process between its two renames
HELD_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _not_plain(path: Path) -> str | None:
    """What `path` is if it exists and is neither a regular file nor a folder (a symlink is not followed)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link (to {os.readlink(path)})"
    kinds = {stat.S_ISFIFO: "a named pipe", stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a device file",
             stat.S_ISBLK: "a device file"}
    return next((kind for test, kind in kinds.items() if test(mode)), None)


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early, before any work, if `path` cannot be written.

    Args:
        path: The file or folder a command is about to write.

    Returns:
        `path` as a ``Path``.
    """
    path = Path(path)
    if (kind := _not_plain(path)) is not None:
        raise FileExistsError(f"{path} is {kind}: a command writes only regular files and folders, and never "
                              "through a link; choose another output path")
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
    """`path` may be written: it does not exist yet, or `overwrite` says to replace it (and it is writable).

    Args:
        path: The output.
        overwrite: Whether an existing output may be replaced.
        flag: The option that says so, named in the message.

    Returns:
        `path` as a ``Path``.
    """
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
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Args:
        path: The file to write.
    """
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


@functools.cache
def _renameat2():
    """glibc's renameat2, or None (another system, an older C library)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (``renameat2(RENAME_EXCHANGE)``); False where the system or the file
    system cannot, and nothing was changed."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_cwd, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h> and <linux/fs.h>
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP that arrive during the block act once it is done, as they would have then."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return
    arrived: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in HELD_SIGNALS}
    previous = {signum: handler for signum, handler in previous.items() if handler is not None}  # None: not ours
    for signum in previous:
        signal.signal(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in arrived:
            signal.raise_signal(signum)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block succeeds it becomes `path`, replacing an
    existing one as a whole (only with `overwrite`). On failure the staging folder goes and `path` is untouched.

    Args:
        path: The folder to write.
        overwrite: Whether an existing folder may be replaced.
    """
    path = check_new(path, overwrite)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} exists and is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".new", dir=path.parent))
    retired, swapped = None, False
    try:
        yield staging
        os.chmod(staging, _default_mode(folder=True))
        if not path.exists():
            os.rename(staging, path)
        elif exchange(staging, path):  # one step: `staging` now holds the old folder, removed below
            pass
        else:
            # Two renames: there is always a complete folder on disk, the old one or the new one, and no signal
            # parts them (a Ctrl-C between them would leave `path` only inside the hidden folder)
            retired = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".old", dir=path.parent))
            with signals_held():
                os.rename(path, retired / path.name)
                try:
                    os.rename(staging, path)
                except BaseException:
                    os.rename(retired / path.name, path)
                    raise
                swapped = True
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and (swapped or not (retired / path.name).exists()):
            shutil.rmtree(retired, ignore_errors=True)


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
    """Write `data` as JSON, atomically; a NaN or infinite number is written as null.

    Args:
        data: The object to write.
        path: The file.

    Returns:
        `path` as a ``Path``.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; a malformed file is a UserError naming the file and line.

    Args:
        path: The file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not a text file ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON: line {error.lineno}, column {error.colno}: {error.msg}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
