"""The folder a training run writes into, claimed by that run alone.

- A new run gets a folder no other run has: the default name (``runs/<preset>-<time>``) takes a suffix when
  that name is taken, and the folder is created with one atomic ``mkdir``.
- While a run writes into a folder it holds its lock: ``.lock``, locked with ``flock`` for as long as the run's
  process lives, and holding its host and process id for the messages. A second run, new or resuming, is refused
  while the lock is held. The kernel drops the ``flock`` when a process dies, however it dies, so a crashed run's
  lock is taken over (with a warning) by whichever run gets the ``flock`` first: one step, never two runs at once.
- An existing folder that holds files is another run (or the user's files): it is refused, unless the run
  resumes it or ``--overwrite`` replaces it as a whole. ``--resume A --output B`` continues run A into B, a new
  run for B: refused if B holds files, unless ``--overwrite``. Replacing happens only once everything the run
  needs (its images, its teacher, the run it resumes) has been read and checked, and never to a folder that holds
  those, through a symlink or not, or the current folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path

from ..base.errors import UserError
from ..base.files import atomic_folder, check_writable
from ..models.run_files import CHECKPOINTS_DIR, TRAIN_CONFIG

LOCK = ".lock"


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or under it, as written (a symlink inside `folder`, which deleting `folder` would take
    with it) or once symlinks are resolved."""
    return (Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
            or path.resolve().is_relative_to(folder.resolve()))


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or a.resolve() == b.resolve()


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

    def __init__(self, output: str | None, preset: str, resuming: bool, overwrite: bool,
                 resumed: str | os.PathLike | None = None):
        """`resumed`: the run folder a resuming run reads its checkpoint from, when it is not `output`."""
        self.explicit = output is not None
        self.path = Path(output) if output is not None else Path("runs", f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")
        # a run continued into another folder is, for that folder, a new run: refused if it holds files
        self.forked_from = Path(resumed) if resuming and resumed is not None and not _same(Path(resumed), self.path) \
            else None
        self.resuming, self.overwrite = resuming and self.forked_from is None, overwrite
        self.locked = False
        self._lock_fd: int | None = None

    def check(self, data: str | None, teacher: str | None) -> None:
        """Refuse, before anything is read or written, what this run could not do to its folder."""
        path = self.path
        if self.resuming and self.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces it: give one of them (--overwrite "
                             "applies to another --output, one the resumed run continues into)")
        named = [("--data", data), ("--teacher", teacher), ("--resume", self.forked_from)]
        local = [(name, Path(value)) for name, value in named
                 if value is not None and (Path(value).exists() or Path(value).is_symlink())]
        for flag, value in local:
            if flag == "--data" and value.is_dir() and _inside(path, value):
                raise UserError(
                    f"--output {path} is inside --data {value}: the run's own images would become training data; "
                    "choose an output folder outside the data folder"
                )
            if self.overwrite and path.exists() and _inside(value, path):
                raise UserError(f"--output {path} holds {flag} {value}: --overwrite would delete it; "
                                 "choose another --output, or move it out first")
        if self.overwrite and path.exists() and _inside(Path.cwd(), path):
            raise UserError(f"--output {path} holds the current folder, which --overwrite cannot replace; "
                             "choose another --output")
        check_writable(path / TRAIN_CONFIG)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--output {path} is a file, not a folder")
        if self.resuming:
            if not (path / TRAIN_CONFIG).is_file():
                raise FileNotFoundError(f"cannot resume {path}: it is not a training run (no {TRAIN_CONFIG})")
        elif self.forked_from is not None and self._holds_files() and not self.overwrite:
            raise FileExistsError(
                f"--output {path} already holds files (another run?), and --resume {self.forked_from} would write "
                f"into it: leave --output out to continue {self.forked_from} in its own folder, choose a new "
                f"--output, or pass --overwrite to replace {path} as a whole"
            )
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
            fd = None
            try:
                with atomic_folder(self.path, overwrite=True) as staging:
                    fd = self._write_lock(staging / LOCK)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                self.release()
                raise
            os.close(self._lock_fd)
            self._lock_fd = fd
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

    def _write_lock(self, path: Path) -> int:
        """Create the lock file `path` (a new one: the folder of an overwrite, before it is swapped in), locked."""
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._record(fd)
        return fd

    @staticmethod
    def _record(fd: int) -> None:
        """Write who holds the lock into its file (for the messages; the ``flock`` is what locks)."""
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode(), 0)

    def _lock(self) -> None:
        lock = self.path / LOCK
        for _ in range(3):
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise
                raise FileExistsError(
                    f"{self.path} is in use by another training run ({self._holder(lock) or 'its lock is held'}): "
                    "wait for it to finish or choose another --output"
                ) from None
            try:
                # the run that held it may have ended between our open and our flock, removing the file: the
                # flock is then on a file no longer at `lock`, and another run may have created a new one
                if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                    os.close(fd)
                    continue
                left = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                holder = self._holder(lock, left) if left else None
                if holder is not None:  # a live process wrote it without a flock (sd-custom-vae 0.3 and older)
                    raise FileExistsError(
                        f"{self.path} is in use by another training run ({holder}): wait for it to finish or "
                        f"choose another --output (if that run is gone, delete {lock})"
                    )
                if left:  # the flock was free: the run that wrote this is gone, however it ended
                    warnings.warn(f"{self.path}: taking over the lock a stopped run left", stacklevel=3)
                self._record(fd)
            except FileNotFoundError:  # removed between open and stat: try again
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd, self.locked = fd, True
            return
        raise FileExistsError(f"{self.path}: another run took the folder at the same moment; choose another --output")

    @staticmethod
    def _holder(lock: Path, text: str | None = None) -> str | None:
        """Who `lock` says holds it (`text`, its content, or read), or None if that process is gone (on this host)
        or is this one."""
        try:
            holder = json.loads(lock.read_text() if text is None else text)
            host, pid = holder["host"], int(holder["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host == socket.gethostname() and (pid == os.getpid() or not _process_alive(pid)):
            return None
        return f"process {pid} on {host}"

    def _empty(self) -> None:
        """Remove what a new run wrote here, keeping its lock. The folder was claimed empty (or emptied by
        --overwrite), so it holds only that run's files."""
        for entry in self.path.iterdir():
            if entry.name == LOCK:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        warnings.warn(f"{self.path}: the run stopped before its first checkpoint; what it wrote was removed, so the "
                      "same command can run again", stacklevel=3)

    def release(self, stopped: bool = False) -> None:
        """Unlock the folder. A new run `stopped` before its first checkpoint leaves it empty: nothing could resume
        from what it wrote, and that would refuse the corrected rerun ("already holds files")."""
        if stopped and self.locked and not self.resuming and not any((self.path / CHECKPOINTS_DIR).glob("step-*")):
            self._empty()
        if self.locked:
            # removed while still flocked: a run that opened it meanwhile sees, after its flock, that the file it
            # holds is no longer the lock, and starts again
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path / LOCK).st_ino == os.fstat(self._lock_fd).st_ino:
                    (self.path / LOCK).unlink()
            os.close(self._lock_fd)
            self._lock_fd, self.locked = None, False
