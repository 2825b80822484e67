"""A careless user and an attacker: every bad input gets one clear line and an exit code, nothing a user
already has is lost (checksums before and after), and no token is ever printed."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import TINY, tiny_vae
from helpers import digest, fails, train_flags
from PIL import Image
from safetensors.torch import load_file, save_file

import conversion
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.base import files as base_files
from sd_custom_vae.cli import main
from sd_custom_vae.conversion import formats
from sd_custom_vae.data import load_image_data
from sd_custom_vae.data.image_file import read_image
from sd_custom_vae.models import run_files
from sd_custom_vae.training import TrainingDiverged, load_config, train
from sd_custom_vae.training import checkpoints as training_state


def test_a_final_phase_the_images_are_too_small_for_is_left_out_and_said(photos, tmp_path, capsys):
    flags = [*train_flags(photos, tmp_path / "run"), "--final-resolution", "256", "--steps", "3"]
    with pytest.warns(UserWarning, match="too small for the final 256px crops"):
        assert main(flags) == 0
    assert json.loads((tmp_path / "run" / run_files.TRAIN_CONFIG).read_text())["final_resolution"] is None
    fails([*train_flags(photos, tmp_path / "other"), "--final-resolution", "16"], capsys,
          "must be 0 (off) or larger than --resolution 32")


# -- nothing a user has is lost ---------------------------------------------------------------------------


def test_train_refuses_an_output_that_holds_a_previous_run(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_flags(photos, run)) == 0
    capsys.readouterr()
    before = digest(run)
    fails(train_flags(photos, run, "--steps", "3"), capsys,
          f"--output {run} already holds files", "--resume", "--overwrite")
    assert digest(run) == before
    assert main(train_flags(photos, run, "--steps", "4", "--checkpoint-every", "4", "--overwrite")) == 0
    assert sorted(p.name for p in (run / run_files.CHECKPOINTS_DIR).iterdir()) == ["step-000004"]
    assert json.loads((run / run_files.METRICS_FILE).read_text())["steps"] == 4


def test_train_never_touches_a_model_folder_the_user_made(photos, tmp_path, capsys):
    run = tmp_path / "mine"
    (run / "model").mkdir(parents=True)
    (run / "model" / "precious.safetensors").write_bytes(b"user's weights")
    before = digest(run)
    fails(train_flags(photos, run), capsys, "already holds files")
    assert digest(run) == before


def test_convert_replaces_a_folder_only_when_asked_and_as_a_whole(tmp_path, capsys, monkeypatch):
    vae = tiny_vae()
    source = tmp_path / "in.safetensors"
    conversion.write_safetensors(conversion.convert_state_dict(vae.state_dict(), "ldm", dict(vae.config)), source,
                                 config={"norm_num_groups": TINY["norm_num_groups"]})
    target = tmp_path / "existing"
    tiny_vae(seed=5).to_autoencoder_kl().save_pretrained(target)
    before = digest(target)
    fails(["convert", str(source), str(target), "--to", "diffusers"], capsys, f"{target} already exists", "--overwrite")
    assert digest(target) == before

    real = base_files.write_json

    def interrupted(data, path):  # the weights are written, then the process dies before config.json
        raise KeyboardInterrupt

    monkeypatch.setattr(formats, "write_json", interrupted)
    assert main(["convert", str(source), str(target), "--to", "diffusers", "--overwrite"]) == 130
    assert digest(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "in.safetensors"]  # no half folder left
    monkeypatch.setattr(formats, "write_json", real)
    assert main(["convert", str(source), str(target), "--to", "diffusers", "--overwrite"]) == 0
    converted = CustomAutoencoderKL.from_pretrained(target)
    for key, value in vae.state_dict().items():
        assert torch.equal(converted.state_dict()[key], value), key


def test_a_single_file_output_is_replaced_only_when_asked_with_normal_permissions(tmp_path, capsys):
    vae = tiny_vae()
    source = tmp_path / "in.safetensors"
    save_file(vae.state_dict(), source)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")
    fails(["convert", str(source), str(target), "--to", "ldm", "--norm-num-groups", "8"], capsys, "already exists")
    assert target.read_bytes() == b"keep me"
    previous = os.umask(0o022)
    try:
        assert main(["convert", str(source), str(target), "--to", "ldm", "--norm-num-groups", "8", "--overwrite"]) == 0
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o644


# -- garbage is refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--steps", "0"], "option steps (--steps) must be at least 1, got 0"),
        (["--keep-checkpoints", "-2"], "keep_checkpoints (--keep-checkpoints) must be at least 1, got -2"),
        (["--keep-checkpoints", "0"], "keep_checkpoints (--keep-checkpoints) must be at least 1, got 0"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be at least 1"),
        (["--resolution", "0"], "resolution (--resolution) must be at least 8"),
        (["--checkpoint-every", "0"], "checkpoint_every (--checkpoint-every) must be at least 1"),
        (["--gradient-accumulation", "0"], "gradient_accumulation (--gradient-accumulation) must be at least 1"),
        (["--learning-rate", "nan"], "learning_rate (--learning-rate) must be a finite number"),
        (["--resolution", "4096"], "--resolution 4096 is more than 2× the largest training image"),
    ],
)
def test_bad_training_options_are_refused_before_anything_is_written(photos, tmp_path, capsys, flags, message):
    fails(train_flags(photos, tmp_path / "run", *flags), capsys, message)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_output_inside_the_data_folder_is_refused(tmp_path, capsys):
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    fails(train_flags(tmp_path, tmp_path / "runs" / "a"), capsys, "is inside --data", "would become training data")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("suffix, text, message", [
    (".yaml", "steps: 10\nbeta: [1, 2\n", "line 3"),
    (".json", '{"steps": 10,\n "beta": }', "line 2, column 10"),
    (".yaml", "- a list\n", "expected a mapping"),
])
def test_malformed_config_files_name_the_file_and_line(tmp_path, capsys, suffix, text, message):
    config = tmp_path / f"bad{suffix}"
    config.write_text(text)
    fails(["train", "--config", str(config), "--output", str(tmp_path / "run")], capsys, str(config), message)


def test_config_values_of_the_wrong_type_name_the_option(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("steps: ten\n")
    fails(["train", "--config", str(config), "--output", str(tmp_path / "run")], capsys,
          "option steps (--steps) must be int, got 'ten'")


def test_sixteen_bit_and_rotated_photos_load_as_they_look(tmp_path):
    ramp = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    deep = np.asarray(read_image(tmp_path / "deep.png"), dtype=np.float64)
    assert abs(deep.mean() - 127.5) < 1.5  # not clipped to white
    wide = Image.new("RGB", (60, 20), (250, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    assert read_image(tmp_path / "rotated.jpg").size == (20, 60)


def test_a_warning_about_a_damaged_photo_names_the_photo(tmp_path):
    # an EXIF block whose one tag claims 100 bytes at an offset past the end of the data
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little")
    tiff += bytes.fromhex("0e01020064000000d0070000")  # tag 270 (ASCII): 100 bytes at offset 2000
    Image.new("RGB", (16, 16)).save(tmp_path / "damaged.jpg", exif=b"Exif\x00\x00" + tiff + bytes(4))
    with pytest.warns(UserWarning) as caught:
        assert read_image(tmp_path / "damaged.jpg").size == (16, 16)
    assert caught and all(str(w.message).startswith(f"{tmp_path / 'damaged.jpg'}: ") for w in caught)


def test_decompression_bombs_and_undecodable_names_are_handled(tmp_path, monkeypatch):
    for i in range(3):
        Image.new("RGB", (40, 40), (i * 80, 0, 0)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 40×40 is then a bomb, as 18k×18k is at the real limit
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    (tmp_path / os.fsdecode(b"caf\xe9.png")).write_bytes((tmp_path / "small.png").read_bytes())
    with pytest.warns(UserWarning, match="skipped 4 file"):
        data = load_image_data(tmp_path, 16)
    assert data.report.loaded == 2  # the 20×20 ones, one of them under a Latin-1 name


def test_nan_and_blown_up_weights_never_make_a_checkpoint(photos, tmp_path):
    config = load_config("tiny", data=str(photos), output=str(tmp_path / "run"), resolution=32, eval_resolution=32,
                         final_resolution=0, batch_size=2, steps=6, checkpoint_every=1, learning_rate=1e30,
                         warmup_steps=0, sample_every=100, eval_every=100)
    with pytest.raises(TrainingDiverged, match="training stopped") as failure:
        train(config, progress=False)
    for folder in training_state.checkpoints(tmp_path / "run"):
        weights = load_file(folder / "model.safetensors")
        assert all(t.abs().max() <= training_state.WEIGHT_LIMIT for t in weights.values()), folder
        assert str(folder) in str(failure.value) or folder != training_state.checkpoints(tmp_path / "run")[0]
    assert not (tmp_path / "run" / run_files.MODEL_DIR).exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_broken_weights_are_refused_naming_the_tensor(tmp_path, capsys, value):
    state = dict(tiny_vae().state_dict(), **{"decoder.conv_out.bias": torch.full((3,), value)})
    save_file(state, tmp_path / "broken.safetensors")
    fails(["convert", str(tmp_path / "broken.safetensors"), str(tmp_path / "out"), "--to", "diffusers",
           "--norm-num-groups", "8"], capsys, "'decoder.conv_out.bias'", "3 NaN or infinite value(s)")
    assert not (tmp_path / "out").exists()


def test_integer_and_overflowing_weights_are_refused(tmp_path, capsys):
    state = tiny_vae().state_dict()
    integers = dict(state, **{"encoder.conv_in.bias": torch.zeros(32, dtype=torch.int64)})
    save_file(integers, tmp_path / "ints.safetensors")
    fails(["convert", str(tmp_path / "ints.safetensors"), str(tmp_path / "a.safetensors"), "--to", "ldm",
           "--norm-num-groups", "8"], capsys, "'encoder.conv_in.bias'", "torch.int64")
    huge = dict(state, **{"encoder.conv_in.bias": torch.full((32,), 1e6)})
    save_file(huge, tmp_path / "huge.safetensors")
    fails(["convert", str(tmp_path / "huge.safetensors"), str(tmp_path / "b.safetensors"), "--to", "ldm",
           "--dtype", "fp16", "--norm-num-groups", "8"], capsys, "'encoder.conv_in.bias'", "torch.float16's range")
    assert not (tmp_path / "a.safetensors").exists() and not (tmp_path / "b.safetensors").exists()


@pytest.mark.parametrize("change, message", [
    ({"norm_num_groups": 7}, "not a positive multiple of norm_num_groups=7"),
    ({"scaling_factor": "banana"}, "scaling_factor must be a positive finite number, got 'banana'"),
    ({"sample_size": -64}, "sample_size must be a positive integer"),
])
def test_bad_config_values_are_refused_wherever_the_folder_is_used(tmp_path, capsys, change, message):
    folder = tmp_path / "vae"
    tiny_vae().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    fails(["convert", str(folder), str(tmp_path / "out.safetensors"), "--to", "ldm"], capsys, message)
    with pytest.raises(ValueError, match=message):
        CustomAutoencoderKL.from_pretrained(folder)
    fails(["push", str(folder), "user/x", "--token", "hf_notused0123456789"], capsys, message)


def test_an_unrecorded_group_count_is_said_and_can_be_given(tmp_path, capsys):
    vae = tiny_vae(norm_num_groups=16, block_out_channels=(32, 64))
    save_file(conversion.convert_state_dict(vae.state_dict(), "ldm", dict(vae.config)), tmp_path / "bare.safetensors")
    assert main(["convert", str(tmp_path / "bare.safetensors"), str(tmp_path / "a"), "--to", "diffusers"]) == 0
    assert "assumed norm_num_groups=32" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "bare.safetensors"), str(tmp_path / "b"), "--to", "diffusers",
                 "--norm-num-groups", "16"]) == 0
    assert CustomAutoencoderKL.from_pretrained(tmp_path / "b").config.norm_num_groups == 16
    with pytest.warns(UserWarning, match="assumed norm_num_groups=32"):
        CustomAutoencoderKL.from_single_file(tmp_path / "bare.safetensors")
    given = CustomAutoencoderKL.from_single_file(tmp_path / "bare.safetensors", norm_num_groups=16)
    assert given.config.norm_num_groups == 16


# -- failures outside the input: one line, nothing lost -----------------------------------------------------


def test_disk_full_says_so_and_keeps_what_was_there(photos, tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.safetensors"
    save_file(tiny_vae().state_dict(), source)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"previous")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(formats, "save_file", full)
    fails(["convert", str(source), str(target), "--to", "ldm", "--norm-num-groups", "8", "--overwrite"], capsys,
          "disk full", code=1)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.safetensors", "out.safetensors"]

    run = tmp_path / "run"
    monkeypatch.undo()
    assert main(train_flags(photos, run)) == 0
    before = digest(run / run_files.CHECKPOINTS_DIR)
    monkeypatch.setattr(torch, "save", full)
    fails(train_flags(photos, run, "--resume", str(run), "--steps", "4"), capsys, "disk full", code=1)
    assert digest(run / run_files.CHECKPOINTS_DIR) == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device every write to fails as ENOSPC")
def test_a_full_disk_at_the_first_checkpoint_says_so_and_leaves_the_folder_free(photos, tmp_path, capsys, monkeypatch):
    # torch.save itself writes to a disk that is full: its own writer says "unexpected pos", a RuntimeError
    monkeypatch.setattr(training_state, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="stopped before its first checkpoint"):
        line = fails(train_flags(photos, run), capsys, "disk full while writing", "step-000002", code=1)
    assert "a bug" not in line
    assert not any(run.iterdir())  # no half-written checkpoint, and nothing that would refuse the rerun
    monkeypatch.undo()
    assert main(train_flags(photos, run)) == 0


def test_resume_with_fewer_steps_than_done_says_so(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_flags(photos, run, "--steps", "4", "--checkpoint-every", "4")) == 0
    capsys.readouterr()
    before = digest(run)
    fails(["train", "--no-progress", "--resume", str(run), "--steps", "2"], capsys,
          "step-000004 is at step 4, past --steps 2", "pass --steps above 4 to train on")
    assert digest(run) == before


def test_an_absurd_architecture_in_a_config_is_refused_before_anything_is_built(tmp_path, capsys):
    for key, value, message in [("layers_per_block", 100_000_000, "layers_per_block must be at most 32, got 100000000"),
                                ("latent_channels", 10**9, "latent_channels must be at most 8192"),
                                ("block_out_channels", [4096] * 2, "about 3.15 billion parameters, more than the 2")]:
        folder = tmp_path / key
        tiny_vae().save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, key: value, "norm_num_groups": 8}))
        fails(["convert", str(folder), str(tmp_path / "out.safetensors"), "--to", "ldm"], capsys, key, message)
    assert not (tmp_path / "out.safetensors").exists()


def test_resume_falls_back_from_a_corrupt_checkpoint_and_refuses_another_architecture(photos, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_flags(photos, run, "--steps", "4", "--checkpoint-every", "2", "--keep-checkpoints", "2")) == 0
    newest = run / run_files.CHECKPOINTS_DIR / "step-000004"
    (newest / "optimizer.pt").write_bytes(b"garbled")
    with pytest.warns(UserWarning) as warned:
        assert main(["train", "--no-progress", "--resume", str(run), "--steps", "6"]) == 0
    said = " ".join(str(w.message) for w in warned)
    assert "step-000004 is unreadable" in said and "resuming from" in said and "step-000002" in said
    fails(["train", "--no-progress", "--resume", str(run), "--config", "small", "--steps", "8", "--data", str(photos)],
          capsys, "holds another architecture")


def test_a_safetensors_file_renamed_ckpt_is_read_by_its_content(tmp_path, capsys):
    vae = tiny_vae()
    save_file(vae.state_dict(), tmp_path / "renamed.ckpt")
    assert main(["convert", str(tmp_path / "renamed.ckpt"), str(tmp_path / "out"), "--to", "diffusers",
                 "--norm-num-groups", "8"]) == 0


def test_wrong_inputs_to_encode_and_decode_are_named():
    vae = tiny_vae()
    with pytest.raises(TypeError, match="image must be a torch.Tensor, got ndarray"):
        vae.encode(np.zeros((1, 3, 16, 16), dtype=np.float32))
    with pytest.raises(TypeError, match="image is torch.float64 but the VAE computes in torch.float32"):
        vae.encode(torch.zeros(1, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(TypeError, match="latents must be a floating-point tensor"):
        vae.decode(torch.zeros(1, 4, 8, 8, dtype=torch.int64))
    vae.enable_tiling(tile_size=16)
    with pytest.raises(ValueError, match="empty batch"):
        vae.decode(torch.zeros(0, 4, 32, 32))


def test_a_device_this_machine_lacks_is_named(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    fails(["generate", "a dog", "--model", str(tmp_path), "--vae", str(tmp_path), "--device", "cuda",
           "--output", str(tmp_path / "x.png")], capsys, "--device cuda: this machine has no such device")


@pytest.mark.parametrize("value, message", [
    (float("nan"), "'encoder.conv_out.weight' holds 4608 NaN or infinite value(s): the checkpoint is broken"),
    (3e38, "latents are NaN or infinite"),  # finite weights whose activations overflow
])
def test_calibrating_a_broken_model_says_what_is_broken(tmp_path, capsys, value, message):
    vae = tiny_vae()
    with torch.no_grad():
        vae.encoder.conv_out.weight.fill_(value)
    vae.save_pretrained(tmp_path / "broken")
    fails(["calibrate", str(tmp_path / "broken"), "--data", "builtin", "--crops", "2", "--resolution", "32"], capsys,
          message)


# -- the Hub: unreachable, silent, hostile ------------------------------------------------------------------


def push(source: Path, repo_id: str, env: dict) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sd_custom_vae", "push", str(source), repo_id]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def hub_env(url: str, tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN=TOKEN, TQDM_DISABLE="1", **extra)
    return env


TOKEN = "hf_SecretTokenThatMustNeverBePrinted42"


@pytest.mark.slow
def test_the_hub_echoing_the_token_never_gets_it_printed(tmp_path):
    from hub_server import FakeHub

    tiny_vae().save_pretrained(tmp_path / "vae")
    with FakeHub() as hub:
        hub.echo_authorization = True
        result = push(tmp_path / "vae", "user/x", hub_env(hub.url, tmp_path))
    assert result.returncode in (1, 2), result.stderr[-2000:]
    assert "Authorization" in result.stderr  # the server's message is shown ...
    assert TOKEN not in result.stderr + result.stdout  # ... without the token
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_unreachable_or_silent_hub_fails_in_one_line(tmp_path):
    import socket

    from hub_server import FakeHub

    tiny_vae().save_pretrained(tmp_path / "vae")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connection refused
    refused = push(tmp_path / "vae", "user/x", hub_env(f"http://127.0.0.1:{port}", tmp_path))
    assert refused.returncode == 1 and "cannot reach the Hugging Face Hub" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    with FakeHub() as hub:
        hub.stall_seconds = 30
        silent = push(tmp_path / "vae", "user/x", hub_env(hub.url, tmp_path, SD_CUSTOM_VAE_HUB_TIMEOUT="1"))
    assert silent.returncode == 1 and "Timeout" in silent.stderr, silent.stderr[-2000:]
    assert "Traceback" not in silent.stderr


def test_pushing_something_that_is_not_a_vae_is_refused(tmp_path, capsys):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    fails(["push", str(tmp_path / "unet"), "user/x", "--token", TOKEN], capsys,
          "holds a UNet2DConditionModel, not a VAE")
    assert TOKEN not in capsys.readouterr().err
