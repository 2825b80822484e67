"""push → pull through a Hub-compatible HTTP server on loopback (tests/hub_server.py).

The pushes and pulls run in subprocesses: huggingface_hub reads HF_ENDPOINT, HF_HOME and
HF_HUB_OFFLINE once, at import, so only a fresh process sees the test server and online mode.
HF_HUB_OFFLINE stays set for this process and every other test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from factories import tiny_vae
from hub_server import FakeHub
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from sd_custom_vae import cli
from sd_custom_vae.models import run_files

TOKEN = "hf_test_token_not_a_secret_0123456789"
METRICS = {"psnr": 21.5, "ssim": 0.612, "steps": 120, "data": "built-in photos (12 images)", "mode": "new",
           "resolution": 32, "wall_time_s": 61.0}


@pytest.fixture
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    vae = tiny_vae(seed=3, scaling_factor=0.42)
    vae.save_pretrained(run / run_files.MODEL_DIR)
    (run / run_files.METRICS_FILE).write_text(json.dumps(METRICS))
    Image.new("RGB", (64, 32), (200, 30, 30)).save(run / run_files.RECONSTRUCTIONS)
    return run


def hub_env(hub: FakeHub, tmp_path: Path, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", TQDM_DISABLE="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def push(source: Path, repo_id: str, env: dict, *flags: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sd_custom_vae", "push", str(source), repo_id, *flags]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


PULL = textwrap.dedent(
    """
    import sys, torch
    from diffusers import AutoencoderKL
    from huggingface_hub import hf_hub_download
    from safetensors.torch import save_file
    from sd_custom_vae import CustomAutoencoderKL

    repo, ldm_file, out = sys.argv[1:]
    ours = CustomAutoencoderKL.from_pretrained(repo).eval()
    stock = AutoencoderKL.from_pretrained(repo).eval()
    single = CustomAutoencoderKL.from_single_file(hf_hub_download(repo, ldm_file)).eval()
    # and the Python API: push what was pulled to a second repo, pull that back
    ours.push_to_hub("user/api-copy", metrics={"psnr": 1.0})
    again = CustomAutoencoderKL.from_pretrained("user/api-copy").eval()
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    with torch.no_grad():
        tensors = {f"ours.{k}": v for k, v in ours.state_dict().items()}
        tensors.update({f"single.{k}": v for k, v in single.state_dict().items()})
        tensors.update({f"again.{k}": v for k, v in again.state_dict().items()})
        for name, model in (("ours", ours), ("stock", stock), ("single", single), ("again", again)):
            tensors[f"out.{name}"] = model.decode(model.encode(x).latent_dist.mean).sample.contiguous()
    tensors["scaling_factor"] = torch.tensor([ours.config.scaling_factor, stock.config.scaling_factor])
    save_file(tensors, out)
    """
)


@pytest.mark.slow
def test_push_then_from_pretrained_round_trip(hub, run_dir, tmp_path):
    before = tree_digest(run_dir)
    result = push(run_dir, "user/tiny-vae", hub_env(hub, tmp_path), "--format", "both")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "user/tiny-vae" in result.stdout

    repo = hub.repos["user/tiny-vae"]
    assert set(repo.files) == {
        "config.json", "diffusion_pytorch_model.safetensors", "tiny-vae.safetensors", "reconstructions.png", "README.md"
    }
    assert len(repo.commits) == 1
    assert tree_digest(run_dir) == before
    # the token went to the server as a bearer token and nowhere else
    assert hub.tokens_seen == {TOKEN}
    assert TOKEN not in result.stdout + result.stderr
    assert not any(TOKEN.encode() in data for data in repo.files.values())
    assert json.loads(repo.files["config.json"])["_class_name"] == "AutoencoderKL"

    out = tmp_path / "pulled.safetensors"
    pull = subprocess.run(
        [sys.executable, "-c", PULL, "user/tiny-vae", "tiny-vae.safetensors", str(out)],
        capture_output=True, text=True, env=hub_env(hub, tmp_path), timeout=300,
    )
    assert pull.returncode == 0, pull.stderr[-3000:]
    pulled = load_file(out)
    original = tiny_vae(seed=3, scaling_factor=0.42).eval()
    for prefix in ("ours", "single", "again"):
        for key, value in original.state_dict().items():
            assert torch.equal(pulled[f"{prefix}.{key}"], value), (prefix, key)
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    with torch.no_grad():
        expected = original.decode(original.encode(x).latent_dist.mean).sample
    for name in ("ours", "stock", "single", "again"):
        torch.testing.assert_close(pulled[f"out.{name}"], expected, rtol=0, atol=1e-5, msg=name)
    assert pulled["scaling_factor"].tolist() == pytest.approx([0.42, 0.42])
    assert ("HEAD", "/user/tiny-vae/resolve/main/config.json") in hub.requests
    assert set(hub.repos["user/api-copy"].files) == {"config.json", "diffusion_pytorch_model.safetensors", "README.md"}


def test_model_card_metadata_and_metrics(hub, run_dir, tmp_path):
    result = push(run_dir, "user/card-vae", hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repos["user/card-vae"].files
    assert "card-vae.safetensors" not in files  # --format diffusers is the default
    text = files["README.md"].decode()
    assert ("POST", "/api/validate-yaml") in hub.requests

    front_matter = yaml.safe_load(text.split("---\n")[1])
    assert front_matter["library_name"] == "diffusers"
    assert {"stable-diffusion", "vae"} <= set(front_matter["tags"])
    assert front_matter["license"] == "apache-2.0"
    card = ModelCard(text)
    reported = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert reported == {"psnr": METRICS["psnr"], "ssim": METRICS["ssim"]}
    # the body: what a reader needs, and an image that resolves inside the repo
    parameters = tiny_vae().num_parameters()
    assert f"{parameters:,}" in text and "0.42" in text and "120" in text
    assert "](reconstructions.png)" in text and "reconstructions.png" in files
    assert 'AutoencoderKL.from_pretrained("user/card-vae")' in text
    assert "StableDiffusionPipeline.from_pretrained(" in text


@pytest.mark.slow
def test_push_without_token_says_how_to_log_in(hub, run_dir, tmp_path):
    result = push(run_dir, "user/tiny-vae", hub_env(hub, tmp_path, token=None))
    assert result.returncode == 2
    assert "hf auth login" in result.stderr and "HF_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert hub.requests == []


@pytest.mark.parametrize("repo_id", ["user/bad name!", "user/../escape", "a/b/c"])
def test_invalid_repo_id_is_refused_before_any_request(run_dir, capsys, repo_id):
    assert cli.main(["push", str(run_dir), repo_id, "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert "invalid repo id" in err and repo_id in err
    assert TOKEN not in err


def test_not_a_run_or_model_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["push", str(tmp_path / "empty"), "user/x", "--token", TOKEN]) == 2
    assert "neither a training run" in capsys.readouterr().err


@pytest.mark.slow
def test_server_error_mid_push_then_rerun(hub, run_dir, tmp_path):
    env = hub_env(hub, tmp_path)
    before = tree_digest(run_dir)
    hub.fail_commits = 100  # more than huggingface_hub's retries
    failed = push(run_dir, "user/flaky-vae", env)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "upload failed" in failed.stderr and "503" in failed.stderr
    assert "run the same command again" in failed.stderr
    assert hub.repos["user/flaky-vae"].files == {}  # the repo was created, nothing committed
    assert tree_digest(run_dir) == before

    hub.fail_commits = 0
    rerun = push(run_dir, "user/flaky-vae", env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "diffusion_pytorch_model.safetensors" in hub.repos["user/flaky-vae"].files
    assert tree_digest(run_dir) == before


def test_a_retried_request_logs_no_credentials(hub, run_dir, tmp_path):
    """huggingface_hub logs the URL of a request it retries; an HF_ENDPOINT with user:password@ puts the password in
    it. Every log line is masked as it is made, whichever handler writes it."""
    env = hub_env(hub, tmp_path)
    password = "mirror-password-0123456789"
    env["HF_ENDPOINT"] = hub.url.replace("http://", f"http://mirror-user:{password}@")
    hub.fail_preuploads = 1  # one transient 500: retried, and logged
    result = push(run_dir, "user/retried-vae", env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "HTTP Error 500" in result.stderr and "://***@127.0.0.1" in result.stderr  # logged, masked
    assert password not in result.stdout + result.stderr and TOKEN not in result.stdout + result.stderr
    assert "diffusion_pytorch_model.safetensors" in hub.repos["user/retried-vae"].files


def test_a_grid_or_metrics_linked_from_outside_the_run_is_not_uploaded(run_dir, tmp_path, capsys):
    private = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(private)
    (run_dir / run_files.RECONSTRUCTIONS).unlink()
    (run_dir / run_files.RECONSTRUCTIONS).symlink_to(private)
    assert cli.main(["push", str(run_dir), "user/x", "--token", TOKEN]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / run_files.RECONSTRUCTIONS} is a link to {private}, outside the run" in err
    (run_dir / run_files.RECONSTRUCTIONS).unlink()
    (tmp_path / "secrets.json").write_text('{"psnr": 1.0}')
    (run_dir / run_files.METRICS_FILE).unlink()
    (run_dir / run_files.METRICS_FILE).symlink_to(tmp_path / "secrets.json")
    assert cli.main(["push", str(run_dir), "user/x", "--token", TOKEN]) == 2
    assert "outside the run" in capsys.readouterr().err


def test_a_grid_that_is_not_a_png_is_refused(tmp_path):
    from sd_custom_vae.models.hub_repo import stage_repo

    (tmp_path / "grid.png").write_bytes(b"#!/bin/sh\necho not an image\n")
    (tmp_path / "stage").mkdir()
    with pytest.raises(ValueError, match="grid.png is not a PNG image"):
        stage_repo(tiny_vae(), tmp_path / "stage", "user/x", reconstructions=tmp_path / "grid.png")


def test_private_push_to_an_existing_public_repo_is_refused(hub, run_dir, tmp_path):
    from hub_server import Repo

    hub.repos["user/public-vae"] = Repo(private=False)
    result = push(run_dir, "user/public-vae", hub_env(hub, tmp_path), "--private")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "user/public-vae already exists and is public" in result.stderr and "nothing was uploaded" in result.stderr
    assert hub.repos["user/public-vae"].files == {} and hub.repos["user/public-vae"].commits == []


def test_a_push_leaves_no_older_weights_beside_the_new_ones(hub, run_dir, tmp_path):
    from hub_server import Repo

    hub.repos["user/old-vae"] = Repo(private=False, files={
        "old-vae-ldm.safetensors": b"older weights", "vae.ckpt": b"older still", "config.json": b"{}",
        "unet/diffusion_pytorch_model.safetensors": b"not ours", "notes.md": b"the user's",
    })
    result = push(run_dir, "user/old-vae", hub_env(hub, tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    repo = hub.repos["user/old-vae"]
    assert set(repo.files) == {"config.json", "diffusion_pytorch_model.safetensors", "reconstructions.png",
                               "README.md", "unet/diffusion_pytorch_model.safetensors", "notes.md"}
    assert len(repo.commits) == 1  # the new weights and the removals: one commit
    assert "removed old-vae-ldm.safetensors, vae.ckpt" in result.stdout


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_metric_that_is_not_a_number_is_not_published(bad):
    from sd_custom_vae.models.model_card import build_model_card

    vae = tiny_vae()
    with pytest.warns(UserWarning, match=f"psnr is {bad}, not a measured number: left out of the model card"):
        card = build_model_card("user/x", dict(vae.config), 10, {**METRICS, "psnr": bad, "wall_time_s": bad})
    assert {r.metric_type for r in card.data.eval_results} == {"ssim"}
    assert "PSNR" not in str(card) and not re.search(r"\b(nan|inf)\b", str(card), re.IGNORECASE)
