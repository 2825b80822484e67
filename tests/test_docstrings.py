"""The public API documents every parameter, in the style mkdocs.yml declares (Google's ``Args:``, as diffusers
writes it), so that the API reference mkdocstrings renders lists them all."""

import dataclasses
import inspect
from pathlib import Path

import griffe
import pytest
import yaml

import conversion
import sd_custom_vae
from sd_custom_vae.models import pipeline

ROOT = Path(__file__).parents[1]

PIPELINE_HELPERS = ("load_pipeline", "inject_vae", "from_pipe", "check_compatibility")
PUBLIC = {
    **{f"sd_custom_vae.{name}": getattr(sd_custom_vae, name) for name in sd_custom_vae.__all__},
    **{f"conversion.{name}": getattr(conversion, name) for name in conversion.__all__},
    **{f"sd_custom_vae.models.pipeline.{name}": getattr(pipeline, name) for name in PIPELINE_HELPERS},
}


def documented_callables():
    """Each public function and class, and each public method the two models define (those they inherit from
    diffusers and torch are theirs to document)."""
    for path, obj in PUBLIC.items():
        if inspect.isfunction(obj):
            yield path, obj, obj
        elif inspect.isclass(obj):
            yield path, obj, obj
            if obj not in (sd_custom_vae.CustomAutoencoderKL, sd_custom_vae.ScratchVAE):
                continue
            for cls in obj.__mro__:
                if not cls.__module__.startswith("sd_custom_vae"):
                    continue
                for name, member in vars(cls).items():
                    function = getattr(member, "__func__", member)  # classmethods
                    if not name.startswith("_") and inspect.isfunction(function):
                        yield f"{path}.{name}", function, function


def parameters_of(obj) -> list[str]:
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            return [field.name for field in dataclasses.fields(obj) if field.init]
        obj = obj.__init__
    names = list(inspect.signature(obj).parameters)
    return [name for name in names if name not in ("self", "cls")]


def documented_names(docstring: str | None) -> set[str] | None:
    """The names the docstring's ``Args:`` (or, for a dataclass, ``Attributes:``) sections document, or None
    without such a section."""
    sections = griffe.Docstring(inspect.cleandoc(docstring or "")).parse("google", warnings=False)
    kinds = (griffe.DocstringSectionKind.parameters, griffe.DocstringSectionKind.attributes)
    found = [section for section in sections if section.kind in kinds]
    if not found:
        return None
    return {item.name.lstrip("*") for section in found for item in section.value}


def test_mkdocs_declares_the_style_the_docstrings_use():
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    handler = next(plugin for plugin in config["plugins"] if isinstance(plugin, dict) and "mkdocstrings" in plugin)
    assert handler["mkdocstrings"]["handlers"]["python"]["options"]["docstring_style"] == "google"


@pytest.mark.parametrize(("path", "obj", "target"), list(documented_callables()), ids=lambda value: (
    value if isinstance(value, str) else ""))
def test_every_parameter_of_the_public_api_is_documented(path, obj, target):
    parameters = parameters_of(target)
    if not parameters:
        return
    documented = documented_names(obj.__doc__)
    if documented is None and inspect.isclass(obj):
        documented = documented_names(obj.__init__.__doc__)
    assert documented is not None, f"{path} takes {parameters} but its docstring has no Args: section"
    missing = [name for name in parameters if name not in documented]
    assert not missing, f"{path}'s Args: section leaves out {missing}"
