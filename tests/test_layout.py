"""The codebase stays one a newcomer can change safely: layers import downwards only, modules stay small.

The layers, lowest first (docs/architecture.md): ``base`` (safe file writing, errors, deprecations); the network;
``conversion``, the key maps and file formats, which build on the network alone; then the other subpackages of
``sd_custom_vae``. The package's own root (``__init__``, ``__main__``, the public ``autoencoder_kl`` module) and the
top-level ``conversion`` package (the public face of ``sd_custom_vae.conversion``) sit above them all.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("sd_custom_vae", "conversion")
LAYERS = [
    "sd_custom_vae.base", "sd_custom_vae.network", "sd_custom_vae.conversion", "sd_custom_vae.data",
    "sd_custom_vae.models", "sd_custom_vae.evaluation", "sd_custom_vae.training", "sd_custom_vae.cli",
]
MAX_LINES = 350


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Every import (module level or inside a function) from one of our modules to another."""
    known = modules()
    graph = {name: set() for name in known}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                # `from package import submodule` imports the submodule; `from module import name`, the module
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def layer(module: str) -> int:
    """The index of `module`'s layer in ``LAYERS``; the package root is above them all."""
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    assert module in ("sd_custom_vae", "sd_custom_vae.__main__", "sd_custom_vae.autoencoder_kl", "conversion"), module
    return len(LAYERS)


def test_every_module_belongs_to_a_layer():
    for name in modules():
        layer(name)


def test_imports_point_down_the_layers_only():
    upward = {
        (name, target) for name, targets in import_graph().items() for target in targets
        if layer(target) > layer(name) and target != "sd_custom_vae"  # the root, imported before any submodule
    }
    assert upward == set()


def test_conversion_builds_on_the_network_alone():
    outside = {
        target for name, targets in import_graph().items() if name.startswith("sd_custom_vae.conversion")
        for target in targets if not target.startswith(("sd_custom_vae.conversion", "sd_custom_vae.network",
                                                          "sd_custom_vae.base"))
    }
    assert outside == set()


def test_the_library_never_imports_the_top_level_conversion_name():
    """A user's own ``conversion.py`` (first on sys.path when they run a script beside it) must not shadow ours."""
    importing = {name for name, targets in import_graph().items() if name.startswith("sd_custom_vae")
                 and any(t == "conversion" or t.startswith("conversion.") for t in targets)}
    assert importing == set()


def test_a_users_own_conversion_py_does_not_break_the_library(tmp_path):
    (tmp_path / "conversion.py").write_text("raise ImportError('a user script named conversion.py was imported')\n")
    # as `python -m sd_custom_vae --help` run beside it: the working folder is first on sys.path
    script = (
        "import importlib.util, os, runpy, sys\n"
        "assert importlib.util.find_spec('conversion').origin == os.path.abspath('conversion.py')\n"  # it shadows
        "from sd_custom_vae import CustomAutoencoderKL\n"
        "CustomAutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4)\n"
        "assert 'conversion' not in sys.modules, sys.modules['conversion']\n"
        "sys.argv = ['sd-custom-vae', '--help']\n"
        "runpy.run_module('sd_custom_vae', run_name='__main__', alter_sys=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            assert visit(node, [node]) is None


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_module_paths_0_2_documented_still_import_with_a_warning(monkeypatch):
    from sd_custom_vae import MOVED_MODULES

    for old, new in MOVED_MODULES.items():
        monkeypatch.delitem(sys.modules, f"sd_custom_vae.{old}", raising=False)
        message = f"sd_custom_vae.{old} is now sd_custom_vae.{new}; the old name stops working in sd-custom-vae 0.5"
        with pytest.warns(FutureWarning, match=message):
            module = importlib.import_module(f"sd_custom_vae.{old}")
        assert module is importlib.import_module(f"sd_custom_vae.{new}")
    # 0.2's evaluation module is a package now, with the same names
    evaluation = importlib.import_module("sd_custom_vae.evaluation")
    assert callable(evaluation.evaluate_vaes) and callable(evaluation.format_table)
