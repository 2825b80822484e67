"""The folder a training run writes into, claimed by that run alone.

- A new run gets a folder no other run has: the default name (``runs/<preset>-<time>``) takes a suffix when
  that name is taken, and the folder is created with one atomic ``mkdir``.
- While a run writes into a folder it holds its lock (``.lock``: host and process id, created exclusively).
  A second run, new or resuming, is refused while that process lives; a lock left by a process that died on
  this host is taken over with a warning, so a crash never leaves a folder locked for good.
- An existing folder that holds files is another run (or the user's files): it is refused, unless the run
  resumes it or ``--overwrite`` replaces it as a whole. Replacing happens only once everything the run needs
  (its images, its teacher) has been read and checked, and never to a folder that holds those, or the
  current folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path

import conversion

from ..models.run_layout import TRAIN_CONFIG

LOCK = ".lock"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolder:
    """A run's folder: chosen and checked first (``check``), claimed once the run has read what it needs
    (``claim``), released when it ends (``release``)."""

    def __init__(self, output: str | None, preset: str, resuming: bool, overwrite: bool):
        self.explicit = output is not None
        self.path = Path(output) if output is not None else Path("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.resuming, self.overwrite = resuming, overwrite
        self.locked = False

    def check(self, data: str | None, teacher: str | None) -> None:
        """Refuse, before anything is read or written, what this run could not do to its folder."""
        path = self.path
        local = [(name, Path(value)) for name, value in (("--data", data), ("--teacher", teacher))
                 if value is not None and Path(value).exists()]
        for flag, value in local:
            if flag == "--data" and value.is_dir() and _inside(path, value):
                raise ValueError(
                    f"--output {path} is inside --data {value}: the run's own images would become training data; "
                    "choose an output folder outside the data folder"
                )
            if self.overwrite and path.exists() and _inside(value, path):
                raise ValueError(f"--output {path} holds {flag} {value}: --overwrite would delete it; "
                                 "choose another --output, or move it out first")
        if self.overwrite and path.exists() and _inside(Path.cwd(), path):
            raise ValueError(f"--output {path} holds the current folder, which --overwrite cannot replace; "
                             "choose another --output")
        conversion.check_writable(path / TRAIN_CONFIG)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--output {path} is a file, not a folder")
        if self.resuming:
            if not (path / TRAIN_CONFIG).is_file():
                raise FileNotFoundError(f"cannot resume {path}: it is not a training run (no {TRAIN_CONFIG})")
        elif self.explicit and self._holds_files() and not self.overwrite:
            raise FileExistsError(
                f"--output {path} already holds files (a previous run?): pass --resume to continue that run, "
                "--overwrite to replace the folder as a whole, or choose another --output"
            )

    def _holds_files(self) -> bool:
        return self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir())

    # -- claiming -------------------------------------------------------------------------------------

    def claim(self) -> Path:
        """Take the folder for this run: create it (a free default name), lock it, and with ``--overwrite``
        replace what it held by an empty folder, as a whole. Returns its path."""
        if not self.explicit and not self.resuming:
            self.path = self._new_default_folder()
        else:
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        if not self.resuming and self._holds_files():
            if not self.overwrite:  # another run wrote here since `check`
                self.release()
                raise FileExistsError(f"--output {self.path} already holds files: choose another --output")
            # our lock leaves with the old folder; the new one is born locked
            with conversion.atomic_folder(self.path, overwrite=True) as staging:
                self._write_lock(staging / LOCK)
        return self.path

    def _new_default_folder(self) -> Path:
        base = self.path
        for attempt in range(1, 1000):
            candidate = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
            try:
                candidate.mkdir(parents=True)
                return candidate
            except FileExistsError:
                continue
        raise FileExistsError(f"{base}: no free run folder name; pass --output")

    def _write_lock(self, path: Path) -> None:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, f)

    def _lock(self) -> None:
        lock = self.path / LOCK
        for _ in range(2):
            try:
                self._write_lock(lock)
                self.locked = True
                return
            except FileExistsError:
                holder = self._holder(lock)
            if holder is None:  # a crashed run's: take it over
                warnings.warn(f"{self.path}: taking over the lock a stopped run left", stacklevel=3)
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise FileExistsError(
                f"{self.path} is in use by another training run ({holder}): wait for it to finish or choose another "
                f"--output (if that run is gone, delete {lock})"
            )
        raise FileExistsError(f"{self.path}: another run took the folder at the same moment; choose another --output")

    @staticmethod
    def _holder(lock: Path) -> str | None:
        """Who holds `lock`, or None if its process is gone (on this host)."""
        try:
            holder = json.loads(lock.read_text())
            host, pid = holder["host"], int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return "an unreadable lock"
        if host == socket.gethostname() and not _process_alive(pid):
            return None
        return f"process {pid} on {host}"

    def release(self) -> None:
        if self.locked:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK).unlink()
            self.locked = False
