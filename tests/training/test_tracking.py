"""--report-to: the run's numbers and pictures, live, in TensorBoard's event files and wandb's offline run."""

import pytest
import yaml
from helpers import fails, train_flags

from sd_custom_vae.cli import main

STEP_TAGS = {"train/total", "train/reconstruction", "train/kl", "train/lr", "train/grad_norm", "train/images_per_s"}


def test_tensorboard_gets_every_term_the_validation_and_the_grid(photos, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(train_flags(photos, run, "--steps", "3", "--eval-every", "2", "--report-to", "tensorboard",
                            "--colour-weight", "0.1")) == 0
    assert f"tracking: tensorboard --logdir {run / 'tracking'}" in capsys.readouterr().out
    events = EventAccumulator(str(run / "tracking" / run.name)).Reload()
    scalars = set(events.Tags()["scalars"])
    assert STEP_TAGS | {"train/colour", "validation/psnr", "validation/ssim"} <= scalars
    assert [e.step for e in events.Scalars("train/lr")] == [1, 2, 3]
    assert {e.step for e in events.Scalars("validation/psnr")} == {0, 2, 3}  # before training, every 2, the end
    assert "validation/reconstructions" in events.Tags()["images"]
    hyperparameters = yaml.safe_load(next((run / "tracking").rglob("hparams.yml")).read_text())
    assert hyperparameters["learning_rate"] == 5e-4
    assert hyperparameters["model.block_out_channels"] == "[32, 64, 128, 128]"


def test_wandb_runs_offline_with_the_whole_config(photos, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(train_flags(photos, run, "--report-to", "wandb")) == 0
    offline = list((run / "tracking" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = next(offline[0].glob("*.wandb")).read_bytes()  # protobuf records: the names are stored as they are
    for name in (b"learning_rate", b"model.block_out_channels", b"train/grad_norm", b"validation/psnr"):
        assert name in records, name
    assert list((offline[0] / "files" / "media" / "images").rglob("*.png"))  # the reconstruction grid


def test_a_tracker_that_is_not_installed_is_named(photos, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    fails(train_flags(photos, tmp_path / "run", "--report-to", "wandb"), capsys,
          "--report-to wandb needs the wandb package")
    assert not (tmp_path / "run").exists()
