"""What README.md and docs/ quote exists in the code: a module path, a file, a command, a flag or an extra that goes
stale fails here, naming the page, the line and the reference.

What is checked, in code spans and fenced code blocks:

- a dotted name under ``sd_custom_vae`` or ``conversion`` (and ``from X import a, b``): the longest prefix that is
  a module, then each remaining part as an attribute; ``Class.attribute`` for a class of ours and
  ``subpackage.name`` (``training.train()``) too;
- a file or folder path whose first folder is one of the repository's (``benchmarks/``, ``tests/``...) or one of the
  package's subpackages (``models/run_files.py``, as docs/architecture.md writes them), and a bare ``name.py``:
  it exists;
- ``sd-custom-vae SUB --flag ...`` (or ``-m sd_custom_vae SUB``, or a code span ``SUB --flag``): SUB is a
  subcommand and every flag is one of its options;
- ``python benchmarks/x.py --flag`` (or ``examples/``): the script exists and declares the flag
  (``add_argument("--flag")``); what follows a bare ``--`` is passed on, not checked;
- a code span of flags alone (``--min-crop-scale 0.5``): each is an option of the subcommand the page is about
  (``PAGE_COMMANDS``), else of any subcommand or of a script the page names;
- ``sd-custom-vae[extra]`` and ``.[extra]``: the extra is declared in pyproject.toml;
- in the prose, a name placed in a module, ```path.py` (`name`, `other`)`` or ```name` in `path.py```: the module
  has it.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import re
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REPO_FOLDERS = ("sd_custom_vae", "conversion", "benchmarks", "examples", "tests", "docs")
PACKAGES = ("sd_custom_vae", "conversion")
FILE_SUFFIXES = {"py", "md", "json", "txt", "png", "yaml", "yml", "toml", "safetensors", "ckpt", "pt", "bin", "sh"}
# the subcommand a page's bare flags belong to (a page about training quotes train's flags)
PAGE_COMMANDS = {"docs/training.md": "train", "docs/conversion.md": "convert"}

# bare file names the pages mention that are not this repository's
FOREIGN_FILES = {
    "conversion.py",  # a user's own module beside their script, which must not shadow our `conversion`
    "setup.py", "test_models_autoencoder_kl.py",  # diffusers' own, in a clone of its repository
}

FLAG = re.compile(r"^[\[(]?(--[a-z0-9][a-z0-9-]*)")
DOTTED = re.compile(r"(?<![\w./-])((?:sd_custom_vae|conversion)(?:\.\w+)+)")
FROM_IMPORT = re.compile(r"\bfrom\s+((?:sd_custom_vae|conversion)[\w.]*)\s+import\s+([\w\s,()]+)")
EXTRA = re.compile(r"(?:sd-custom-vae|\.)\[([\w,-]+)\]")


def split(page: Path) -> tuple[str, list[tuple[int, str, str]]]:
    """The page's prose (its fenced blocks blanked, so that line numbers hold) and (line, text, language) of each
    line of a fenced block. A bash line continued with a backslash is one text; a bash comment is dropped."""
    fenced, prose, fence, pending = [], [], None, None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip().strip("`").strip()
            prose.append("")
            continue
        prose.append(line if fence is None else "")
        if fence is None:
            continue
        if fence == "bash":
            line = re.sub(r"(^|\s)#.*$", "", line)
            if pending:
                number, line = pending[0], pending[1] + " " + line
            pending = (number, line.rstrip()[:-1]) if line.rstrip().endswith("\\") else None
            if pending:
                continue
        fenced.append((number, line, fence))
    return "\n".join(prose), fenced


def quotes(page: Path) -> list[tuple[int, str, str]]:
    """(line, text, kind) of each code span and each line of a fenced block; kind is "span" or the fence's language
    ("" for none)."""
    prose, found = split(page)
    for match in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", prose, flags=re.S):
        span = match.group(2).replace("\\|", "|").replace("\n", " ").strip()
        found.append((prose.count("\n", 0, match.start()) + 1, span, "span"))
    return found


def placed_names(page: Path) -> list[tuple[int, str, str]]:
    """(line, name, path) for each name the prose places in a module: `path.py` (`name`, `other`) or `name` in
    `path.py`."""
    prose, _ = split(page)
    found = []
    for match in re.finditer(r"`([\w/.]+\.py)`\s*\(([^()]*)\)", prose):
        found += [(match.start(), name, match.group(1)) for name in re.findall(r"`(\w+)`", match.group(2))]
    found += [(match.start(), match.group(1), match.group(2))
              for match in re.finditer(r"`(\w+)` in `([\w/.]+\.py)`", prose)]
    return [(prose.count("\n", 0, start) + 1, name, path) for start, name, path in found]


def check_placed(name: str, path: str) -> str | None:
    """Why `name` is not in the module at `path` (None if it is)."""
    where = repo_path(path)
    if not isinstance(where, Path) or not where.is_file():
        return None  # the path's own check says so
    if name in top_level_names(where):
        return None
    parts = where.relative_to(ROOT).with_suffix("").parts
    if parts[0] not in PACKAGES:
        return f"{path} defines no {name!r}"
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return resolve_dotted(f"{module}.{name}") and f"{path} has no {name!r}"


@functools.cache
def cli_options() -> dict[str | None, set[str]]:
    """Each subcommand's option strings (None: the top-level parser's)."""
    from sd_custom_vae.cli import build_parser

    parser = build_parser()
    options = {None: set(parser._option_string_actions)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            options.update({name: set(sub._option_string_actions) for name, sub in action.choices.items()})
    return options


@functools.cache
def script_options(script: Path) -> set[str]:
    """The option strings a script declares: the string arguments of its add_argument calls."""
    calls = [node for node in ast.walk(ast.parse(script.read_text())) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]
    return {arg.value for call in calls for arg in call.args if isinstance(arg, ast.Constant)}


@functools.cache
def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def flags(tokens: list[str]) -> list[str]:
    found = []
    for token in tokens:
        if token == "--":  # what follows is handed on to another command
            break
        if match := FLAG.match(token):
            found.append(match.group(1))
    return found


def resolve_dotted(name: str) -> str | None:
    """None if `name` is a module or a module's attribute, else why not. The module is the longest prefix that is one
    (found without running it); an attribute its source defines at top level is read from the source, any other
    (a lazy export, an attribute's attribute) by importing the module: the truth, but diffusers costs seconds."""
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])
    if spec is None:
        return "no such module"
    cut = 1
    while cut < len(parts) and spec.submodule_search_locations is not None:
        try:
            child = importlib.util.find_spec(".".join(parts[: cut + 1]))
        except ModuleNotFoundError:
            child = None
        if child is None:
            break
        spec, cut = child, cut + 1
    module_name, attributes = ".".join(parts[:cut]), parts[cut:]
    if not attributes:
        return None
    if len(attributes) == 1 and spec.origin and spec.origin.endswith(".py"):
        if attributes[0] in top_level_names(Path(spec.origin)):
            return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 0.2's module paths still import, with a warning
        target = importlib.import_module(module_name)
    for attribute in attributes:
        if not hasattr(target, attribute):
            return f"{module_name} has no {attribute!r}"
        target = getattr(target, attribute)
    return None


@functools.cache
def our_classes() -> dict[str, list[tuple[str, set[str]]]]:
    """Each class our packages define at top level: [(its module, the names its body defines)]."""
    classes = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.ClassDef):
                    names = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                    names |= {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)
                              and isinstance(n.target, ast.Name)}
                    classes.setdefault(node.name, []).append((module, names))
    return classes


def resolve_qualified(text: str) -> str | None:
    """Why `Class.attribute` (a class of ours) or `subpackage.name` (of sd_custom_vae) does not exist; None if it
    does, or if the span is neither (`pipe.enable_vae_tiling()`, `nn.Module`)."""
    match = re.fullmatch(r"([A-Za-z_]\w*)\.(\w+)(?:\(.*\))?", text)
    if not match or match.group(2) in FILE_SUFFIXES:  # export.py, eval.json: a file's name
        return None
    owner, attribute = match.groups()
    if owner in our_classes():
        homes = our_classes()[owner]
        if any(attribute in names for _, names in homes):
            return None
        # an inherited or generated attribute: ask the class itself
        if all(resolve_dotted(f"{module}.{owner}.{attribute}") for module, _ in homes):
            return f"{owner} has no {attribute!r}"
        return None
    if (ROOT / "sd_custom_vae" / owner / "__init__.py").is_file():
        return resolve_dotted(f"sd_custom_vae.{owner}.{attribute}")
    return None


@functools.cache
def top_level_names(source: Path) -> set[str]:
    """The names a module's source binds at its top level (definitions, assignments, imports), under if/try too."""
    names, pending = set(), list(ast.parse(source.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.If, ast.Try)):
            pending += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                        *(n for handler in getattr(node, "handlers", []) for n in handler.body)]
    return names


def repo_path(token: str) -> Path | bool | None:
    """Where a quoted path should be: a path under the repository (or the package); for a bare file name, whether
    the repository has one; None for a path that is not the repository's (a user's folder, a run's file)."""
    token = token.strip("\"'()[],;:").split("::")[0]
    if not token or any(c in token for c in "{}*<>@=") or "://" in token:
        return None
    if "/" not in token:
        if re.fullmatch(r"\w+\.(py|md)", token) and token not in FOREIGN_FILES:
            return any(any(ROOT.glob(f"{folder}/**/{token}")) for folder in REPO_FOLDERS) or (ROOT / token).exists()
        return None
    first = token.split("/")[0]
    candidates = [ROOT / token] if first in REPO_FOLDERS else []
    if first not in ("", ".", "..") and (ROOT / "sd_custom_vae" / first / "__init__.py").is_file():
        candidates.append(ROOT / "sd_custom_vae" / token)  # models/resolver.py, as docs/architecture.md writes it
    return next((path for path in candidates if path.exists()), candidates[0] if candidates else None)


def check(text: str, kind: str, page_command: str | None = None, named_scripts: tuple[Path, ...] = ()) -> list[str]:
    """What is wrong with one quoted text (a code span, or a line of a fenced block of language `kind`)."""
    problems = []
    for name in DOTTED.findall(text):
        if not name.endswith((".py", ".md")) and (why := resolve_dotted(name)):
            problems.append(f"{name}: {why}")
    for module, names in FROM_IMPORT.findall(text):
        for attribute in re.findall(r"\w+", names):
            if why := resolve_dotted(f"{module}.{attribute}"):
                problems.append(f"from {module} import {attribute}: {why}")
    if kind == "span" and (why := resolve_qualified(text)):
        problems.append(why)
    for token in text.split():
        where = repo_path(token)
        if where is False or (isinstance(where, Path) and not where.exists()):
            problems.append(f"{token}: no such file or folder in the repository")
    for extra in EXTRA.findall(text):
        problems += [f"[{name}]: not an extra in pyproject.toml" for name in extra.split(",") if name not in extras()]
    options = cli_options()
    for command in re.split(r"&&|;", text):
        tokens = command.split()
        start = next((i + 1 for i, t in enumerate(tokens) if t == "sd-custom-vae"
                      or (t == "sd_custom_vae" and i and tokens[i - 1] == "-m")), None)
        if start is None and kind == "span" and tokens and tokens[0] in options and flags(tokens[1:]):
            start = 0  # `eval --data`: a subcommand and its flag
        if start is not None:
            sub = tokens[start] if start < len(tokens) and not tokens[start].startswith("-") else None
            if sub is not None and sub not in options:
                commands = ", ".join(filter(None, options))
                problems.append(f"sd-custom-vae {sub}: no such subcommand (there are {commands})")
                continue
            problems += [f"{flag}: not an option of sd-custom-vae {sub or ''}".rstrip()
                         for flag in flags(tokens[start + (sub is not None):]) if flag not in options[sub]]
        script = next((i for i, t in enumerate(tokens[:-1]) if t == "python" and tokens[i + 1].endswith(".py")), None)
        if script is not None and (path := ROOT / tokens[script + 1]).is_file():
            problems += [f"{flag}: not an option of {tokens[script + 1]}"
                         for flag in flags(tokens[script + 2:]) if flag not in script_options(path)]
    if kind == "span" and text.startswith("--"):
        if page_command:
            known, whose = options[page_command], f"sd-custom-vae {page_command}, which this page is about"
        else:
            known = set().union(*options.values(), *(script_options(script) for script in named_scripts))
            whose = "any subcommand or any script this page names"
        problems += [f"{flag}: not an option of {whose}" for flag in flags(text.split()) if flag not in known]
    return problems


def named_scripts(page: Path) -> tuple[Path, ...]:
    """The benchmark and example scripts a page names, by path or by file name."""
    text = page.read_text()
    return tuple(script for folder in ("benchmarks", "examples") for script in sorted((ROOT / folder).glob("*.py"))
                 if re.search(rf"(?<![\w-]){re.escape(script.name)}", text))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_quoted_reference_exists(page):
    name = page.relative_to(ROOT).as_posix()
    scripts = named_scripts(page)
    problems = [f"{name}:{line}: `{text}`: {problem}"
                for line, text, kind in quotes(page) for problem in check(text, kind, PAGE_COMMANDS.get(name), scripts)]
    problems += [f"{name}:{line}: `{attribute}` in `{path}`: {problem}"
                 for line, attribute, path in placed_names(page) if (problem := check_placed(attribute, path))]
    assert not problems, "stale references (the code is the truth: fix the page):\n" + "\n".join(problems)


def test_the_checks_catch_what_they_claim_to(tmp_path):
    """Each kind of stale reference fails (a checker that passes everything would make the test above a no-op)."""
    page = tmp_path / "page.md"
    page.write_text(
        "`sd_custom_vae.models.no_such_module` and `sd_custom_vae.models.pipeline.no_such_name`\n"
        "`models/no_such_file.py`, `tests/no_such_folder/` and `no_such_script.py`\n"
        "`sd-custom-vae no-such-command` and `sd-custom-vae train --no-such-flag`\n"
        "`python benchmarks/vae_speed.py --no-such-option`, `--no-such-bare-flag`, `sd-custom-vae[no-such-extra]`\n"
        "```python\nfrom conversion import no_such_function\n```\n"
        "`network/roles.py` (`TileStep`, `NoSuchRole`), and `NO_SUCH_TABLE` in `sd_custom_vae/__init__.py`\n"
        "`Trainer.no_such_method()`, `training.no_such_function()`\n"
    )
    problems = [(line, problem) for line, text, kind in quotes(page) for problem in check(text, kind)]
    said = "\n".join(f"{line}: {problem}" for line, problem in problems)
    for line, expected in [
        (1, "sd_custom_vae.models has no 'no_such_module'"), (1, "has no 'no_such_name'"),
        (2, "models/no_such_file.py"), (2, "tests/no_such_folder/"), (2, "no_such_script.py"),
        (3, "no-such-command: no such subcommand"),
        (3, "--no-such-flag: not an option of sd-custom-vae train"), (4, "--no-such-option: not an option of"),
        (4, "--no-such-bare-flag"), (4, "[no-such-extra]"), (6, "no_such_function"),
        (9, "Trainer has no 'no_such_method'"), (9, "sd_custom_vae.training has no 'no_such_function'"),
    ]:
        assert any(n == line and expected in problem for n, problem in problems), f"{expected!r} not caught:\n{said}"
    for fine in ("sd-custom-vae train --steps 10 --data photos/", "./photos", "eval.json", "conversion.py"):
        assert check(fine, "span") == [], fine
    placed = [(line, check_placed(name, path)) for line, name, path in placed_names(page)]
    assert placed == [(8, None), (8, "network/roles.py has no 'NoSuchRole'"),
                      (8, "sd_custom_vae/__init__.py has no 'NO_SUCH_TABLE'")], placed
