"""The checkpoints ``--resume`` continues from, inside a run folder's ``checkpoints/``.

- A checkpoint folder exists only once complete (written under a temporary name, then renamed) and
  only if the weights in it are sane: finite and not blown up (``check_sane``), so the checkpoint a
  diverged run names is one worth resuming. The newest ``keep`` are kept, newest by step number.
- Resuming takes the newest checkpoint that reads back whole, saying which ones it skipped.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..base.errors import UserError
from ..base.files import write_json
from ..conversion import write_safetensors
from ..models.run_files import CHECKPOINTS_DIR

# the files of a checkpoint folder
MODEL_WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.pt"
SCHEDULER = "scheduler.pt"
EMA = "ema.pt"  # with --ema-decay
DISCRIMINATOR = "discriminator.safetensors"  # with --disc-weight
DISCRIMINATOR_OPTIMIZER = "disc_optimizer.pt"
DISCRIMINATOR_SCHEDULER = "disc_scheduler.pt"
STATE = "state.json"  # step, elapsed time and the logged history: what marks a folder as a checkpoint

# A weight this large is a run blowing up (a learning rate of 1e30 gets there in one step), not a VAE
# learning: trained VAE weights stay within a few units.
WEIGHT_LIMIT = 1e4
_STEP_FOLDER = re.compile(r"step-(\d+)")


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite and sane; the run stopped at its last good checkpoint."""


def check_sane(model: torch.nn.Module, step: int, last_good: Path | None) -> None:
    """Raise ``TrainingDiverged`` if any weight is NaN, infinite or beyond ``WEIGHT_LIMIT``."""
    for name, parameter in model.named_parameters():
        largest = parameter.detach().abs().max().item() if parameter.numel() else 0.0
        if not largest <= WEIGHT_LIMIT:  # also catches NaN
            raise TrainingDiverged(
                f"the weights blew up by step {step} ({name} reached {largest:.3g}); training stopped. "
                + resume_hint(last_good)
            )


def resume_hint(last_good: Path | None) -> str:
    if last_good is None:
        return "No checkpoint was saved yet: try a lower --learning-rate or a smaller --beta."
    return (f"The last good checkpoint is {last_good}: resume from it with a lower --learning-rate or a smaller "
            "--beta (sd-custom-vae train --resume RUN --learning-rate ...).")


def folder_for(run: Path, step: int) -> Path:
    return run / CHECKPOINTS_DIR / f"step-{step:06d}"


def save(run: Path, step: int, files: dict[str, object], keep: int) -> Path:
    """Write one checkpoint folder: ``.safetensors`` entries are (tensors, config) pairs, ``.pt`` entries
    anything ``torch.save`` takes, ``.json`` entries dicts. Complete or absent; the newest `keep` stay."""
    folder = folder_for(run, step)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, content in files.items():
            if name.endswith(".safetensors"):
                tensors, config = content
                write_safetensors(tensors, tmp / name, config=config)
            elif name.endswith(".json"):
                write_json(content, tmp / name)
            else:
                _save_pickle(content, tmp / name)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError as error:  # a full disk: named as the checkpoint, which is what the user can find and resume
        if error.errno != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed write (disk full) leaves the earlier checkpoints alone
    for old in checkpoints(run)[keep:]:
        shutil.rmtree(old)
    return folder


def check_steps_left(folder: Path, step: int, steps: int) -> None:
    """Refuse to resume `folder`, at `step`, towards fewer --steps (the run's total, not the steps to add); say so when
    nothing is left to train."""
    if step > steps:
        raise UserError(f"{folder} is at step {step}, past --steps {steps}: --steps is the run's total, not the steps "
                        f"to add; pass --steps above {step} to train on")
    if step == steps:
        warnings.warn(f"{folder} is at step {steps}, the run's --steps: nothing left to train; it is validated and "
                      f"exported again (pass --steps above {steps} to train on)", stacklevel=4)


def _save_pickle(content: object, path: Path) -> None:
    # through a Python file: a failed write (a full disk) then raises OSError with its errno, where torch's own
    # file writer says only "[enforce fail at inline_container.cc] unexpected pos 704 vs 598", a RuntimeError
    with open(path, "wb") as file:
        torch.save(content, file)


def load(folder: Path) -> dict[str, object]:
    """Every file of a checkpoint folder, read back (pickles with ``weights_only=True`` only)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            files[path.name] = load_file(path)
        elif path.suffix == ".json":
            files[path.name] = json.loads(path.read_text())
        elif path.suffix == ".pt":
            files[path.name] = torch.load(path, map_location="cpu", weights_only=True)
    if STATE not in files:
        raise UserError(f"{folder}: no {STATE}")
    return files


def checkpoints(run: Path) -> list[Path]:
    """The run's checkpoint folders, newest first: by step number, so step 1,000,000 comes before step 999,999."""
    found = [(int(match.group(1)), path) for path in (run / CHECKPOINTS_DIR).glob("step-*")
             if path.is_dir() and (match := _STEP_FOLDER.fullmatch(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def resumed_run(resume: str | Path | bool, output: str | Path | None) -> Path:
    """The run folder ``--resume`` names: `resume` itself, the run of a checkpoint folder, or (True) `output`."""
    if resume is True and output is None:
        raise UserError("--resume without a folder needs --output RUN")
    where = Path(output if resume is True else resume)
    return where.parent.parent if (where / STATE).exists() else where


def resume_candidates(where: Path) -> list[Path]:
    """A checkpoint folder as given, or a run's checkpoints newest first."""
    if (where / STATE).exists():
        return [where]
    found = checkpoints(where)
    if not found:
        raise FileNotFoundError(f"nothing to resume: no checkpoint under {where / CHECKPOINTS_DIR}")
    return found


def load_newest_intact(candidates: list[Path], apply) -> Path:
    """Load the first of `candidates` that reads back whole, through `apply(files, folder)`; say which were skipped.

    `apply` raising ``ValueError`` means the checkpoint is intact but does not fit the run (another
    architecture): that is the user's mistake to hear about, not a reason to fall back further.
    """
    for folder in candidates:
        try:
            files = load(folder)
        except Exception as error:  # noqa: BLE001 - a truncated or garbled file shows up as many error types
            warnings.warn(
                f"checkpoint {folder} is unreadable (truncated or garbled: {type(error).__name__}); "
                "trying an older one",
                stacklevel=2,
            )
            continue
        apply(files, folder)
        if folder != candidates[0]:
            warnings.warn(f"resuming from {folder}, the newest intact checkpoint", stacklevel=2)
        return folder
    raise UserError(f"cannot resume: none of the {len(candidates)} checkpoint(s) could be read back")
