"""What the tests of the command line share: checksums of a folder, a failing command's one line, a quick run."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sd_custom_vae.cli import main


def digest(folder: Path) -> dict:
    """Every file under `folder` with its checksum and mode: equal before and after means nothing was lost."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def fails(argv: list[str], capsys, *messages: str, code: int = 2) -> str:
    """Run the CLI in-process; it must exit with `code` and one error line holding every one of `messages`."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(error_lines) == 1, err
    for message in messages:
        assert message in error_lines[0], err
    return error_lines[0]


def train_flags(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "--data", str(data), "--output", str(output), "--resolution", "32",
            "--eval-resolution", "32", "--final-resolution", "0", "--batch-size", "2", "--steps", "2",
            "--checkpoint-every", "2", "--sample-every", "100", "--eval-every", "100", *extra]
