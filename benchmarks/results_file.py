"""benchmarks/results/*.json: each benchmark appends one row per run, so earlier runs stay comparable."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def append_row(name: str, row: dict) -> Path:
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(history + [row], indent=2) + "\n")
    return path
