"""The training loop end to end on the built-in photos, at sizes that take seconds."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.evaluation import perceptual
from sd_custom_vae.models import run_files
from sd_custom_vae.training import TrainingDiverged, load_config, train
from sd_custom_vae.training.losses import VAELoss

FAST = dict(resolution=32, eval_resolution=32, final_resolution=0, batch_size=4, learning_rate=1e-3, warmup_steps=2,
            eval_every=10, sample_every=10, checkpoint_every=10)


def test_tiny_preset_learns_and_writes_its_run_folder(tmp_path):
    # MSE: its fall is steep enough to show in 30 steps. It shows on the fixed validation crops: the training
    # crops' losses, four randomly rescaled and hue-turned crops a step, vary more than 30 steps lower them.
    # From random weights: the preset's start as resizing already reconstructs about as well as resizing
    # (tests/training/test_initialisation.py), so what the loop learns in 30 steps shows from random ones.
    config = load_config("tiny", steps=30, output=str(tmp_path / "run"), init="random",
                         **dict(FAST, learning_rate=2e-3, reconstruction="mse"))
    result = train(config, progress=False)
    run = result.output
    val = json.loads((run / run_files.CHECKPOINTS_DIR / "step-000030" / "state.json").read_text())["val_history"]
    assert val[-1]["psnr"] > val[0]["psnr"] + 2  # dB
    assert result.history[-1]["colour"] < result.history[0]["colour"]  # the preset's colour term is trained
    for name in (run_files.METRICS_FILE, run_files.RECONSTRUCTIONS, run_files.LOSS_CURVE, run_files.TRAIN_CONFIG,
                 "samples/step-000010.png", "checkpoints/step-000030/model.safetensors"):
        assert (run / name).exists(), name
    metrics = json.loads((run / run_files.METRICS_FILE).read_text())
    assert metrics["steps"] == 30 and metrics["psnr"] == pytest.approx(result.metrics["psnr"])
    # the exported folder is ready for vae=
    vae = CustomAutoencoderKL.from_pretrained(run / run_files.MODEL_DIR)
    assert list(vae.config.block_out_channels) == list(config.model["block_out_channels"])
    with torch.no_grad():
        assert vae(torch.zeros(1, 3, 32, 32)).sample.shape == (1, 3, 32, 32)


def test_first_validation_beats_untrained_reconstruction(tmp_path):
    config = load_config("tiny", steps=40, output=str(tmp_path / "run"), init="random",
                         **dict(FAST, eval_every=1, sample_every=40))
    result = train(config, progress=False)
    state = result.output / run_files.CHECKPOINTS_DIR / "step-000040" / "state.json"
    val = json.loads(state.read_text())["val_history"]
    assert [v["step"] for v in val] == list(range(41))
    assert val[-1]["psnr"] > val[0]["psnr"] + 2  # dB


def test_checkpoints_are_pruned_and_loadable(tmp_path):
    config = load_config("tiny", steps=6, output=str(tmp_path / "run"),
                         **dict(FAST, checkpoint_every=2, keep_checkpoints=2))
    train(config, progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / run_files.CHECKPOINTS_DIR).iterdir())
    assert kept == ["step-000004", "step-000006"]  # and no leftover temporary folder
    CustomAutoencoderKL.from_scratch_checkpoint(tmp_path / "run" / "checkpoints" / "step-000006" / "model.safetensors")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = VAELoss.vae_terms

    def poisoned(self, images, reconstruction, mean, logvar, step, last_layer=None):
        terms = real(self, images, reconstruction, mean, logvar, step, last_layer)
        if step == 5:
            terms["total"] = terms["total"] * float("nan")
        return terms

    monkeypatch.setattr(VAELoss, "vae_terms", poisoned)
    config = load_config("tiny", steps=10, output=str(tmp_path / "run"), **dict(FAST, checkpoint_every=2))
    with pytest.raises(TrainingDiverged, match=r"nan at step 5.*step-000004"):
        train(config, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-000004").exists()
    assert not (tmp_path / "run" / "checkpoints" / "step-000006").exists()
    assert not (tmp_path / "run" / run_files.MODEL_DIR).exists()


def test_ldm_recipe_runs_perceptual_gan_ema_and_course_objective(tmp_path):
    """Every optional term at once, for a few steps: each is computed and logged on its own."""
    config = load_config(
        "tiny", steps=3, output=str(tmp_path / "run"),
        **dict(FAST, disc_weight=0.5, disc_start=1, kl_reduction="sum", beta=2.5e-4, reconstruction="l1",
               ema_decay=0.9, perceptual_weight=1.0 if perceptual.available() else 0.0),
    )
    result = train(config, progress=False)
    assert "discriminator" in result.history[-1] and "discriminator" not in result.history[0]
    assert "generator" in result.history[-1] and "kl" in result.history[0]
    if perceptual.available():
        assert result.history[0]["perceptual"] > 0
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "discriminator.safetensors").exists()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sd_custom_vae.cli", "train", "--no-progress", *args]


FAST_FLAGS = ["--resolution", "32", "--eval-resolution", "32", "--final-resolution", "0", "--batch-size", "4",
              "--lr", "1e-3", "--warmup-steps", "2", "--eval-every", "100", "--sample-every", "100"]


@pytest.mark.slow
def test_kill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same arithmetic in both runs
    steps = ["--steps", "16", "--checkpoint-every", "4"]
    subprocess.run(cli(*FAST_FLAGS, *steps, "--output", str(tmp_path / "straight")), check=True, env=env)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(cli(*FAST_FLAGS, *steps, "--output", str(interrupted)), env=env)
    first = interrupted / "checkpoints" / "step-000004"
    deadline = time.time() + 300
    while not first.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (interrupted / run_files.MODEL_DIR).exists()

    subprocess.run(cli("--resume", str(interrupted)), check=True, env=env)
    expected = load_file(tmp_path / "straight" / "checkpoints" / "step-000016" / "model.safetensors")
    resumed = load_file(interrupted / "checkpoints" / "step-000016" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    straight_history = json.loads((tmp_path / "straight" / "checkpoints" / "step-000016" / "state.json").read_text())
    resumed_history = json.loads((interrupted / "checkpoints" / "step-000016" / "state.json").read_text())
    assert [h["total"] for h in straight_history["history"]] == [h["total"] for h in resumed_history["history"]]


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "sd_custom_vae.cli", "train", "--no-progress",
        *FAST_FLAGS, "--steps", "4", "--checkpoint-every", "4", "--output", str(tmp_path / "run"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / run_files.METRICS_FILE).read_text())
    assert metrics["processes"] == 2 and metrics["steps"] == 4


# -- teacher modes ---------------------------------------------------------------------------------

SD_LIKE = dict(block_out_channels=(32, 32, 64, 64), layers_per_block=2, latent_channels=4, norm_num_groups=16)


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    """A randomly initialised teacher with SD's shape (4 levels, ×8, 4 latent channels), saved as users save VAEs."""
    torch.manual_seed(0)
    teacher = CustomAutoencoderKL(**SD_LIKE, scaling_factor=0.5, shift_factor=0.1)
    folder = tmp_path_factory.mktemp("teacher")
    teacher.save_pretrained(folder)
    return folder


def test_distillation_learns_the_teachers_latent_space(tmp_path, teacher_folder):
    config = load_config(
        "student", teacher=str(teacher_folder), steps=30, output=str(tmp_path / "run"), student_width=0.5,
        **dict(FAST, eval_every=1000, sample_every=1000, checkpoint_every=1000),
    )
    result = train(config, progress=False)
    first, last = result_history(result.output)[0], result_history(result.output)[-1]
    assert (first["step"], last["step"]) == (0, 30)
    assert last["latent_relative_error"] < 0.8 * first["latent_relative_error"]
    assert last["teacher_latent_psnr"] > first["teacher_latent_psnr"] + 1
    student = CustomAutoencoderKL.from_pretrained(result.output / run_files.MODEL_DIR)
    assert student.config.scaling_factor == 0.5 and student.config.shift_factor == 0.1  # inherited
    assert list(student.config.block_out_channels) == [16, 16, 32, 32]
    metrics = json.loads((result.output / run_files.METRICS_FILE).read_text())
    assert metrics["mode"] == "distill" and "latent_relative_error" in metrics and "teacher_psnr" in metrics


def result_history(run: Path) -> list[dict]:
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    return json.loads((last / "state.json").read_text())["val_history"]


def test_decoder_finetune_keeps_the_teachers_encoder(tmp_path, teacher_folder):
    config = load_config(
        "tiny", mode="decoder-finetune", teacher=str(teacher_folder), steps=4, output=str(tmp_path / "run"),
        **dict(FAST, eval_every=100, sample_every=100),
    )
    result = train(config, progress=False)
    teacher = CustomAutoencoderKL.from_pretrained(teacher_folder)
    tuned = CustomAutoencoderKL.from_pretrained(result.output / run_files.MODEL_DIR)
    for key, tensor in teacher.state_dict().items():
        if key.startswith(("encoder.", "quant_conv.")):  # the encoder side is frozen: exactly the teacher's
            assert torch.equal(tuned.state_dict()[key], tensor), key
    assert not torch.equal(tuned.decoder.conv_out.weight, teacher.decoder.conv_out.weight)
    assert tuned.config.scaling_factor == 0.5


def test_teacher_modes_refuse_bad_setups(tmp_path, teacher_folder):
    with pytest.raises(ValueError, match="needs --teacher"):
        train(load_config("tiny", mode="distill", output=str(tmp_path / "a"), **FAST), progress=False)
    with pytest.raises(ValueError, match="student has 3 levels, the teacher 4"):
        train(load_config("tiny-f4", mode="distill", teacher=str(teacher_folder), output=str(tmp_path / "b"), **FAST),
              progress=False)
    with pytest.raises(FileNotFoundError, match="no such VAE"):
        train(load_config("student", teacher=str(tmp_path / "missing"), output=str(tmp_path / "c"), **FAST),
              progress=False)


def test_train_command_takes_the_teacher_flags():
    from sd_custom_vae.cli import build_parser
    from sd_custom_vae.cli.train import resolve_config

    args = build_parser().parse_args(
        ["train", "--config", "student", "--teacher", "sd-vae", "--student-width", "0.5", "--latent-weight", "2"]
    )
    config = resolve_config(args)
    assert (config.mode, config.teacher, config.student_width, config.latent_weight) == ("distill", "sd-vae", 0.5, 2.0)
    args = build_parser().parse_args(["train", "--mode", "decoder-finetune", "--teacher", "t",
                                      "--decoder-init", "random"])
    config = resolve_config(args)
    assert (config.preset, config.mode, config.decoder_init) == ("tiny", "decoder-finetune", "random")


@pytest.mark.slow
def test_compiled_run_crosses_the_crop_phases_and_exports(tmp_path):
    # --compile: validation and export see the plain ScratchVAE, and the final phase's new crop side compiles
    # a second static graph (a dynamic-shape one failed to compile for the CPU). One level: compiling is the cost.
    model = dict(block_out_channels=(16,), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 mid_block_add_attention=False)
    config = load_config("tiny", steps=4, model=model, output=str(tmp_path / "run"), compile=True,
                         **dict(FAST, resolution=16, final_resolution=32, final_fraction=0.5, eval_every=4,
                                sample_every=4))
    result = train(config, progress=False)
    metrics = json.loads((result.output / run_files.METRICS_FILE).read_text())
    assert metrics["steps"] == 4 and "compile_s" in metrics and torch.isfinite(torch.tensor(metrics["psnr"]))
    assert [h["step"] for h in result.history] == [1, 2, 3, 4]
    CustomAutoencoderKL.from_pretrained(result.output / run_files.MODEL_DIR)
