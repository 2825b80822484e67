"""The manual builds as a site: a broken link, a missing page or a docstring mkdocstrings cannot read fails here."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_mkdocs_builds_strictly(tmp_path):
    if shutil.which("mkdocs") is None and subprocess.run([sys.executable, "-m", "mkdocs", "--version"]).returncode:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (the dev extra has it)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert "CustomAutoencoderKL" in api
    # the Args: sections rendered as parameter tables (a docstring_style that does not match writes them as text)
    assert 'id="sd_custom_vae.models.loading.load_vae"' in api and "pretrained_model_link_or_path_or_dict" in api
    assert api.count("Parameters:") >= 40


def test_readme_is_an_entry_not_a_manual():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("training", "conversion", "evaluation", "architecture", "drop-in"):
        assert f"docs/{page}.md" in readme
