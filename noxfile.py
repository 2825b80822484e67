"""nox sessions for what CI does not run on every change.

    nox -s lowest     the fast tests on the lowest version of every dependency pyproject.toml declares

The lower bounds in pyproject.toml are claims: this session installs exactly them (each ``>=X`` as ``==X``, torch
as 2.13.0, the CPU build) into a fresh environment, resolves the test extras within them, and runs
``pytest -m "not slow"``. A bound raised or lowered is a bound this session has run.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES_REPORTED = ("torch", "diffusers", "transformers", "accelerate", "huggingface-hub", "datasets", "safetensors",
                     "numpy", "peft")


def lowest_pins() -> list[str]:
    """``name==version`` for every ``name>=version`` among the package's dependencies."""
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = []
    for dependency in dependencies:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([0-9][0-9a-z.]*)", dependency.replace(" ", ""))
        if match is None:
            raise ValueError(f"pyproject.toml: {dependency!r} has no lower bound to test")
        pins.append(f"{match[1]}=={match[2]}")
    return pins


@nox.session(venv_backend="venv", reuse_venv=False)
def lowest(session: nox.Session) -> None:
    constraints = Path(session.create_tmp()) / "lowest.txt"
    constraints.write_text("\n".join(lowest_pins()) + "\n")
    session.install("-c", str(constraints), "-e", ".[dev]")
    names = ", ".join(repr(name) for name in PACKAGES_REPORTED)
    session.run("python", "-c",
                "import importlib.metadata as m; "
                f"print('; '.join(f'{{n}} {{m.version(n)}}' for n in ({names})))")
    session.run("python", "-m", "pytest", "-q", "-m", "not slow", *session.posargs, env={"HF_HUB_OFFLINE": "1"})
