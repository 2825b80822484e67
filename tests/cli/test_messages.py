"""Errors that speak the user's language: one line naming the option, file or value and what to do, no token ever
printed, nothing half-written left behind, whatever the terminal."""

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import types

import numpy as np
import pytest
import torch
from factories import tiny_vae
from helpers import fails
from PIL import Image
from safetensors.torch import save_file

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main
from sd_custom_vae.cli.redact import redact
from sd_custom_vae.evaluation.perceptual import distance_name

TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"


def run_cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_custom_vae", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, **kwargs)


@pytest.mark.parametrize("argv", [
    ["push", "RUN", "me/vae", TOKEN],  # --token forgotten
    ["push", "RUN", "me/vae", "--tokn", TOKEN],  # misspelled
    ["push", "RUN", "me/vae", "--format", TOKEN],  # in the wrong flag
], ids=["positional", "misspelled-flag", "wrong-flag"])
def test_a_token_typed_in_the_wrong_place_is_never_printed(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err and "hf_***" in captured.err


def test_redaction_masks_tokens_not_words(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "model")  # a "token" that is a word: masking it would garble every message
    from sd_custom_vae.cli.redact import known_secrets

    assert "model" not in known_secrets()
    harmless = "set HF_ENDPOINT; hf_hub_download failed for model x"
    assert redact(harmless) == harmless
    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer hf_***"


@pytest.mark.slow
def test_a_terminal_that_cannot_show_arrows_gets_the_output_and_success(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    result = run_cli("convert", str(tmp_path / "vae"), str(tmp_path / "out.safetensors"), "--to", "ldm",
                     env={"PYTHONIOENCODING": "cp1252"})
    assert result.returncode == 0, result.stderr
    assert "ldm at" in result.stdout and (tmp_path / "out.safetensors").is_file()


@pytest.mark.slow
def test_sigterm_during_a_conversion_leaves_no_temporary_file(tmp_path):
    save_file(CustomAutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2).state_dict(),
              tmp_path / "in.safetensors")  # SD's size: a few seconds to write, time to be interrupted
    process = subprocess.Popen([sys.executable, "-m", "sd_custom_vae", "convert", str(tmp_path / "in.safetensors"),
                                str(tmp_path / "out"), "--to", "diffusers"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        if process.poll() is not None:
            pytest.skip("the conversion finished before it could be interrupted")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (143, 0), err
    assert sorted(p.name for p in tmp_path.iterdir()) in (["in.safetensors"], ["in.safetensors", "out"])


def test_sighup_a_closed_terminal_sends_stops_a_conversion_cleanly(tmp_path, capsys, monkeypatch):
    from sd_custom_vae.conversion import formats

    tiny_vae().save_pretrained(tmp_path / "vae")
    before = sorted(p.name for p in tmp_path.iterdir())

    def hang_up(data, path):  # the weights are written, then the terminal closes
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(formats, "write_json", hang_up)
    assert main(["convert", str(tmp_path / "vae"), str(tmp_path / "out"), "--to", "diffusers"]) == 129
    assert "terminated (SIGHUP); nothing half-written was left" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no hidden temporary folder
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL

    # under nohup, SIGHUP is ignored, and stays so: a closed terminal must not stop the command
    seen = []
    monkeypatch.setattr(formats, "write_json",
                        lambda data, path: seen.append(signal.getsignal(signal.SIGHUP)))
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        main(["convert", str(tmp_path / "vae"), str(tmp_path / "out"), "--to", "diffusers"])
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert seen == [signal.SIG_IGN]


def test_eval_shows_a_vae_named_twice_twice(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "vae")
    assert main(["eval", str(tmp_path / "vae"), str(tmp_path / "vae"), "--resolution", "32", "--metrics", "psnr",
                 "--output", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "(#1)" in out and "(#2)" in out


def test_eval_upscales_small_photos_instead_of_padding_them(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    for i in range(2):
        Image.new("RGB", (48, 48), (200, 100, 50)).save(tmp_path / "photos" / f"p{i}.png")
    tiny_vae().save_pretrained(tmp_path / "vae")
    with pytest.warns(UserWarning, match="upscaled 2 image"):
        assert main(["eval", str(tmp_path / "vae"), "--data", str(tmp_path / "photos"), "--resolution", "64",
                     "--metrics", "psnr", "--output", str(tmp_path / "eval")]) == 0
    fails(["eval", str(tmp_path / "vae"), "--data", str(tmp_path / "photos"), "--resolution", "256",
           "--output", str(tmp_path / "eval2")], capsys, "--resolution 256 is more than 2×")


def test_eval_refuses_a_teacher_of_another_latent_shape(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "vae")
    tiny_vae(latent_channels=8).save_pretrained(tmp_path / "teacher")
    fails(["eval", str(tmp_path / "vae"), "--teacher", str(tmp_path / "teacher"), "--resolution", "32",
           "--output", str(tmp_path / "eval")], capsys, "a latent space can only be compared with one of its shape")


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "VAE", "--data", "builtin", "--resolution", "0"], "--resolution must be at least 8, got 0"),
    (["calibrate", "VAE", "--data", "builtin", "--resolution", "-8"], "--resolution must be at least 8, got -8"),
    (["fp16-fix", "VAE", "OUT", "--images", "0"], "--images must be at least 1, got 0"),
    (["fp16-fix", "VAE", "OUT", "--ldm", "x.bin"], "--ldm x.bin: the LDM file is written as safetensors"),
    (["generate", "a dog", "--model", "M", "--vae", "VAE", "--guidance-scale", "nan"],
     "--guidance-scale must be a number"),
    (["generate", "a dog", "--model", "M", "--vae", "VAE", "--height", "-64"], "--height must be at least 8, got -64"),
    (["generate", "a dog", "--model", "M", "--vae", "VAE", "--height", "65536", "--width", "65536"],
     "--height 65536 is too large: at most 8192 px"),
    (["eval", "VAE", "--resolution", "8"], "--resolution 8 is too small for SSIM: its Gaussian window is 11 px wide"),
    pytest.param(["eval", "VAE", "--resolution", "16", "--metrics", "psnr,lpips"], "LPIPS: its AlexNet",
                 marks=pytest.mark.skipif(distance_name() is None, reason="no perceptual network installed")),
    (["train", "--data", "VAE", "--resolution", "8", "--eval-resolution", "8"],
     "--eval-resolution 8 is too small for SSIM"),
    (["train", "--data", "VAE", "--resolution", "16", "--perceptual-weight", "1"],
     "--resolution 16 is too small for ST-LPIPS"),
])
def test_bad_numbers_are_named_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    tiny_vae().save_pretrained(tmp_path / "VAE")
    fails(argv, capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VAE"]


def test_a_bad_hub_timeout_and_a_bad_metrics_file_are_named(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    tiny_vae().save_pretrained(run / "model")
    (run / "metrics.json").write_text("{not json")
    fails(["push", str(run), "user/x", "--token", TOKEN], capsys, "metrics.json: not valid JSON")
    monkeypatch.setenv("SD_CUSTOM_VAE_HUB_TIMEOUT", "abc")
    fails(["push", str(run), "user/x", "--token", TOKEN], capsys, "SD_CUSTOM_VAE_HUB_TIMEOUT='abc' is not a number")


def test_python_api_arguments_of_the_wrong_type_are_named(tmp_path):
    vae = tiny_vae()
    with pytest.raises(TypeError, match=r"enable_tiling\(tile_size=...\) takes a whole number"):
        vae.enable_tiling(tile_size="32")
    save_file(vae.state_dict(), tmp_path / "vae.safetensors")
    assert CustomAutoencoderKL.from_single_file(tmp_path / "vae.safetensors", norm_num_groups=8,
                                                torch_dtype="float16").dtype == torch.float16
    with pytest.raises(TypeError, match="torch_dtype 'half-ish' is not a dtype"):
        CustomAutoencoderKL.from_single_file(tmp_path / "vae.safetensors", torch_dtype="half-ish")


def test_inject_vae_refuses_broken_weights(tmp_path):
    from sd_custom_vae.models.pipeline import inject_vae

    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    state_dict = dict(vae.state_dict(), **{"decoder.conv_in.bias": torch.full((64,), float("nan"))})
    save_file(state_dict, tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match="decoder.conv_in.bias.*NaN"):
        inject_vae(types.SimpleNamespace(components={"vae": None}), tmp_path / "vae")


# -- --data that names the wrong thing --------------------------------------------------------------------


def webdataset_shard(path, with_images: bool = True, count: int = 4):
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            name, data = (f"s{i}.png", io.BytesIO()) if with_images else (f"s{i}.txt", io.BytesIO(b"caption"))
            if with_images:
                Image.fromarray(np.full((40, 40, 3), 6 * i, np.uint8)).save(data, format="PNG")
            info = tarfile.TarInfo(name)
            info.size = len(data.getvalue())
            tar.addfile(info, io.BytesIO(data.getvalue()))


def test_shards_given_as_urls_are_read_with_a_dependency_and_its_absence_is_said(monkeypatch):
    from sd_custom_vae.data.hf_datasets import webdataset_shards

    urls = "https://example.com/s-{000..001}.tar"
    assert webdataset_shards(urls) == ["https://example.com/s-000.tar", "https://example.com/s-001.tar"]
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # an install from before fsspec[http] was a dependency
    with pytest.raises(ValueError, match="shards given as URLs are read with aiohttp, .*pip install aiohttp"):
        webdataset_shards(urls)


def test_eval_names_a_missing_local_folder_as_train_does(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny_vae().save_pretrained(tmp_path / "vae")
    for data in ("photos/train", "pics/train"):  # beside a photos/ folder, and with no such first folder either
        (tmp_path / "photos").mkdir(exist_ok=True)
        fails(["eval", "vae", "--data", data, "--resolution", "32", "--metrics", "psnr"], capsys,
              f"--data {data}: no such image folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "vae"]


@pytest.mark.parametrize("case, message", [
    ("image-file", "is one image file: give the folder that holds the images"),
    ("missing-local", "no such image folder"),
    ("no-images", "holds no readable images"),
    ("truncated", "a truncated or damaged shard?"),
    ("billion-shards", "names more than 100,000 shards"),
])
def test_data_that_names_the_wrong_thing_says_what(tmp_path, capsys, monkeypatch, case, message):
    from helpers import train_flags

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "photos" / "one.png")
    if case == "no-images":
        webdataset_shard(tmp_path / "captions.tar", with_images=False)
    if case == "truncated":
        webdataset_shard(tmp_path / "whole.tar", count=40)
        (tmp_path / "cut.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:20000])  # inside a member
    data = {"image-file": "photos/one.png", "missing-local": "photos/train", "no-images": "captions.tar",
            "truncated": "cut.tar", "billion-shards": "s-{000000000..999999999}.tar"}[case]
    flags = train_flags(tmp_path, tmp_path / "run")
    flags[flags.index("--data") + 1] = data
    fails(flags, capsys, message)
    assert not (tmp_path / "run").exists()
