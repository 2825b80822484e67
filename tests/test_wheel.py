"""The wheel `python -m build` makes installs into a fresh virtual environment, and the command line runs from it."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_the_wheel_installs_and_its_command_runs(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("sd_custom_vae-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies are this environment's (a .pth line adds its site-packages: no download, and no .pth of its
    # own, so this checkout's editable install stays out); the package itself comes from the wheel alone.
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    script = "import sd_custom_vae, conversion; print(sd_custom_vae.__file__, conversion.__file__)"
    where = subprocess.run([str(python), "-c", script],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout
    assert str(ROOT) not in where and str(venv) in where
    command = venv / "bin" / "sd-custom-vae"
    assert "convert" in subprocess.run([str(command), "--help"], cwd=tmp_path, env=env, check=True, capture_output=True,
                                       text=True).stdout
    sys.path.insert(0, str(Path(__file__).parent))
    from factories import tiny_vae

    save_file(tiny_vae().state_dict(), tmp_path / "vae.safetensors")
    argv = [str(command), "convert", str(tmp_path / "vae.safetensors"), str(tmp_path / "ldm.safetensors"),
            "--to", "ldm", "--norm-num-groups", "8"]
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ldm.safetensors").is_file() and torch.cuda.is_available() in (True, False)
