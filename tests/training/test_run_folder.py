"""A run's folder: claimed by one run alone, replaced only once everything the run needs was read, never a folder
that holds the run's own images or teacher; checkpoints rotated by step number; a resume that applies the
overrides it can and reads the same data from any folder."""

import json
import os
import subprocess
import sys

import pytest
from factories import tiny_vae
from helpers import digest, fails, train_flags

from sd_custom_vae.cli import main
from sd_custom_vae.models.run_files import CHECKPOINTS_DIR, TRAIN_CONFIG
from sd_custom_vae.training import checkpoints
from sd_custom_vae.training.run_folder import LOCK, RunFolder


def test_overwrite_refuses_an_output_that_holds_the_data_or_the_teacher(photos, tmp_path, capsys):
    project = tmp_path / "proj"
    (project / "photos").mkdir(parents=True)
    for image in photos.iterdir():
        (project / "photos" / image.name).write_bytes(image.read_bytes())
    before = digest(project)
    fails(train_flags(project / "photos", project, "--overwrite"), capsys,
          f"--output {project} holds --data", "--overwrite would delete it")
    tiny_vae().save_pretrained(project / "teacher")
    before = digest(project)
    fails([*train_flags(photos, project, "--overwrite"), "--mode", "distill", "--teacher", str(project / "teacher")],
          capsys, "holds --teacher")
    assert digest(project) == before


def test_overwriting_the_current_folder_is_refused(photos, tmp_path, capsys, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    fails(train_flags(photos, tmp_path / ".", "--overwrite"), capsys, "holds the current folder")
    assert (tmp_path / "notes.txt").read_text() == "mine" and not list(tmp_path.glob(".*.old"))


def test_nothing_is_replaced_before_the_images_are_read(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("an earlier run")
    fails(train_flags(tmp_path / "no-such-photos", run, "--overwrite"), capsys, "no-such-photos")
    assert (run / "old.txt").read_text() == "an earlier run"


@pytest.mark.slow
def test_runs_started_together_get_a_folder_each(photos, tmp_path):
    """Three runs in the same second with the default name: three folders, each complete."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    flags = [arg for arg in train_flags(photos, tmp_path) if arg not in ("--output", str(tmp_path))]
    runs = [subprocess.Popen([sys.executable, "-m", "sd_custom_vae", *flags], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0, 0], [run.stderr.read().decode()[-500:] for run in runs]
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3
    for folder in folders:
        assert (folder / "model" / "config.json").is_file() and not (folder / LOCK).exists()
        assert len(list((folder / "checkpoints").iterdir())) == 1


def test_a_folder_in_use_is_refused_and_a_crashed_runs_lock_taken_over(photos, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": os.getppid()}))  # a live process
    fails(train_flags(photos, run), capsys, "in use by another training run", f"process {os.getppid()}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    with pytest.warns(UserWarning, match="taking over the lock a stopped run left"):
        assert main(train_flags(photos, run)) == 0
    assert not (run / LOCK).exists()


def test_two_runs_into_one_explicit_folder_one_is_refused(tmp_path):
    first, second = (RunFolder(str(tmp_path / "run"), "tiny", False, False) for _ in range(2))
    first.claim()
    with pytest.raises(FileExistsError, match="in use by another training run"):
        second.claim()
    first.release()
    second.claim()
    second.release()


def test_checkpoints_rotate_and_resume_by_step_number(tmp_path):
    for step in (999_998, 999_999, 1_000_000):
        checkpoints.save(tmp_path, step, {checkpoints.STATE: {"step": step}}, keep=2)
    assert [p.name for p in checkpoints.checkpoints(tmp_path)] == ["step-1000000", "step-999999"]
    assert checkpoints.resume_candidates(tmp_path)[0].name == "step-1000000"


def test_resume_applies_a_new_learning_rate_and_adds_an_average_and_a_discriminator(photos, tmp_path):
    run = tmp_path / "run"
    assert main(train_flags(photos, run, "--learning-rate", "1e-3", "--lr-schedule", "constant")) == 0
    with pytest.warns(UserWarning) as warned:
        assert main(["train", "--no-progress", "--resume", str(run), "--steps", "4", "--checkpoint-every", "4",
                     "--learning-rate", "1e-9", "--ema-decay", "0.9", "--disc-weight", "0.5"]) == 0
    said = " ".join(str(w.message) for w in warned)
    assert "--learning-rate 1e-09" in said and "no weight average" in said and "no discriminator" in said
    saved = json.loads((run / TRAIN_CONFIG).read_text())
    assert saved["learning_rate"] == 1e-9 and saved["ema_decay"] == 0.9
    history = json.loads((run / CHECKPOINTS_DIR / "step-000004" / "state.json").read_text())["history"]
    assert history[-1]["lr"] == pytest.approx(1e-9)  # applied, not only recorded
    assert (run / CHECKPOINTS_DIR / "step-000004" / "ema.pt").is_file()


def test_resume_from_another_folder_reads_the_same_images(photos, tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        (folder / "photos").mkdir(parents=True)
    for i, image in enumerate(sorted(photos.iterdir())):
        (first / "photos" / image.name).write_bytes(image.read_bytes())
        if i < 3:
            (second / "photos" / image.name).write_bytes(image.read_bytes())
    monkeypatch.chdir(first)
    flags = train_flags(tmp_path, first / "run")
    flags[flags.index("--data") + 1] = "photos"  # relative to the folder the run starts in
    assert main(flags) == 0
    assert json.loads((first / "run" / TRAIN_CONFIG).read_text())["data"] == str(first / "photos")
    monkeypatch.chdir(second)  # its photos/ holds other images: the recorded absolute path is used
    assert main(["train", "--no-progress", "--resume", str(first / "run"), "--steps", "3",
                 "--checkpoint-every", "3"]) == 0
    fails(["train", "--no-progress", "--resume", str(first / "run"), "--steps", "4", "--data", "photos"], capsys,
          "was trained on", "--data now names")


def test_the_discriminator_has_its_own_learning_rate_and_follows_the_schedule(photos, tmp_path):
    from sd_custom_vae.training import Trainer, load_config

    config = load_config("tiny", data=str(photos), output=str(tmp_path / "run"), resolution=32, eval_resolution=32,
                         final_resolution=0, batch_size=2, steps=10, warmup_steps=2, learning_rate=1e-3,
                         disc_learning_rate=4e-3, disc_weight=0.5, disc_start=0, lr_schedule="cosine")
    trainer = Trainer(config, progress=False)
    discriminator = trainer.loss.adversary.optimizer
    assert discriminator.param_groups[0]["lr"] == 0.0  # warm-up starts at zero, as the VAE's
    for _ in range(5):
        trainer.train_step()
    vae_lr, disc_lr = trainer.optimisation.learning_rate, discriminator.param_groups[0]["lr"]
    assert 0 < vae_lr < 1e-3 and disc_lr == pytest.approx(4 * vae_lr)
    trainer.folder.release()


def test_bad_adam_betas_are_named(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("adam_betas: [0.9, 1.5]\n")
    fails(["train", "--config", str(tmp_path / "c.yaml")], capsys, "adam_betas must be two numbers in [0, 1)")


def test_overwrite_refuses_an_output_that_holds_the_data_through_a_symlink(photos, tmp_path, capsys):
    """`--data RUN/photos`, photos a symlink to the images elsewhere: deleting RUN would take the data's name with it
    (the run then fails when it reads the images again), so RUN is never replaced."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "old.txt").write_text("an earlier run")
    (run / "photos").symlink_to(photos, target_is_directory=True)
    before = digest(run)
    fails(train_flags(run / "photos", run, "--overwrite"), capsys, f"--output {run} holds --data",
          "--overwrite would delete it")
    assert digest(run) == before and (run / "photos").is_symlink()


def _fake_run(folder, photos):
    import conversion
    from sd_custom_vae.training import load_config

    folder.mkdir(parents=True)
    config = load_config("tiny", data=str(photos), output=str(folder), resolution=32, eval_resolution=32)
    conversion.write_json(config.to_dict(), folder / TRAIN_CONFIG)
    (folder / "metrics.json").write_text('{"psnr": 20.0}')


def test_resuming_into_another_runs_folder_is_refused(photos, tmp_path, capsys):
    first, other = tmp_path / "a", tmp_path / "b"
    _fake_run(first, photos)
    _fake_run(other, photos)
    before = digest(other)
    fails(["train", "--no-progress", "--resume", str(first), "--output", str(other), "--steps", "4"], capsys,
          f"--output {other} already holds files", f"--resume {first} would write into it", "--overwrite")
    assert digest(other) == before and not (other / LOCK).exists()
    # --overwrite of a folder that holds the resumed run would delete what it resumes
    fails(["train", "--no-progress", "--resume", str(first), "--output", str(tmp_path), "--overwrite"], capsys,
          f"--output {tmp_path} holds --resume {first}")
    fails(["train", "--no-progress", "--resume", str(first), "--overwrite"], capsys, "give one of them")
    assert digest(other) == before and (first / TRAIN_CONFIG).is_file()


def test_a_run_continued_into_a_new_folder_leaves_its_own_alone(photos, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(train_flags(photos, first)) == 0
    before = digest(first)
    assert main(["train", "--no-progress", "--resume", str(first), "--output", str(second), "--steps", "4",
                 "--checkpoint-every", "2"]) == 0
    assert digest(first) == before
    assert [p.name for p in checkpoints.checkpoints(second)] == ["step-000004"]
    assert json.loads((second / TRAIN_CONFIG).read_text())["output"] == str(second)


def test_a_held_lock_is_never_taken_over_whatever_it_says(tmp_path):
    """The lock's file names a dead process, but a live run holds its flock: a second run is refused."""
    holder, second = (RunFolder(str(tmp_path / "run"), "tiny", False, False) for _ in range(2))
    holder.claim()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run" / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    with pytest.raises(FileExistsError, match="in use by another training run"):
        second.claim()
    holder.release()
    assert not (tmp_path / "run" / LOCK).exists()


def test_an_empty_lock_a_full_disk_left_does_not_block_the_next_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / TRAIN_CONFIG).write_text("{}")
    (run / LOCK).write_bytes(b"")  # created, then the disk was full before its holder could be written
    resuming = RunFolder(str(run), "tiny", True, False)
    resuming.check(None, None)
    resuming.claim()
    assert resuming.locked and json.loads((run / LOCK).read_text())["pid"] == os.getpid()
    resuming.release()


def test_a_new_run_stopped_before_its_first_checkpoint_leaves_its_folder_free(tmp_path):
    folder = RunFolder(str(tmp_path / "run"), "tiny", False, False)
    folder.claim()
    (tmp_path / "run" / TRAIN_CONFIG).write_text("{}")
    (tmp_path / "run" / "checkpoints" / ".tmp-step-000002").mkdir(parents=True)
    with pytest.warns(UserWarning, match="stopped before its first checkpoint"):
        folder.release(stopped=True)
    assert list((tmp_path / "run").iterdir()) == []
    RunFolder(str(tmp_path / "run"), "tiny", False, False).check(None, None)  # the rerun is not refused


def test_a_lock_released_while_another_run_waits_for_it_is_not_shared(tmp_path, monkeypatch):
    """B opens the lock; before B's flock, A ends (removing the file) and C claims a new one: B's flock then holds a
    file that is no longer the lock, so B must look again and be refused, not train beside C."""
    from sd_custom_vae.training import run_folder

    a, b, c = (RunFolder(str(tmp_path / "run"), "tiny", False, False) for _ in range(3))
    a.claim()
    real_flock = run_folder.fcntl.flock
    interleaved = []

    def flock(fd, operation):
        if not interleaved:
            interleaved.append(fd)
            a.release()
            c.claim()
        return real_flock(fd, operation)

    monkeypatch.setattr(run_folder.fcntl, "flock", flock)
    with pytest.raises(FileExistsError, match="in use by another training run"):
        b.claim()
    assert c.locked and not b.locked
    c.release()


CLAIM = """
import sys, time, warnings
from pathlib import Path
from sd_custom_vae.training.run_folder import RunFolder
go = Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
folder = RunFolder(sys.argv[1], "tiny", True, False)
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder.claim()
except FileExistsError:
    print("refused")
else:
    print("claimed")
    time.sleep(2)
    folder.release()
"""


def test_resumes_of_one_crashed_run_started_together_one_takes_over(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": int(dead.stdout)}))
    go = tmp_path / "go"
    resumes = [subprocess.Popen([sys.executable, "-c", CLAIM, str(run), str(go)], stdout=subprocess.PIPE, text=True)
               for _ in range(4)]
    assert [p.stdout.readline().strip() for p in resumes] == ["ready"] * 4  # all waiting: then all at once
    go.touch()
    said = sorted(p.communicate(timeout=120)[0].strip() for p in resumes)
    assert said == ["claimed", "refused", "refused", "refused"]
