"""Every place --data can point: 🤗 datasets (parquet, save_to_disk), WebDataset shards by brace pattern, a Hub
teacher; each trains a few steps, holds out validation images it never trains on, and feeds eval and calibrate."""

import io
import json
import os
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_custom_vae.cli import main
from sd_custom_vae.data import DataOptions, StreamCrops, load_image_data
from sd_custom_vae.data.hf_datasets import expand_braces
from sd_custom_vae.data.opener import open_source
from sd_custom_vae.data.sources import MapSource, StreamSource, bucket
from sd_custom_vae.models import run_files

datasets = pytest.importorskip("datasets")


def photo(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """🤗 datasets keeps its caches under the test's folder, never the user's."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))


@pytest.fixture
def parquet_folder(tmp_path) -> Path:
    """A parquet dataset whose image column is called "picture", beside a caption column."""
    features = datasets.Features({"picture": datasets.Image(), "caption": datasets.Value("string")})
    rows = {"picture": [photo(i) for i in range(12)], "caption": [f"photo {i}" for i in range(12)]}
    folder = tmp_path / "parquet"
    folder.mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / "train-00000.parquet"))
    return folder


@pytest.fixture
def saved_dataset(tmp_path) -> Path:
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int32")})
    rows = {"img": [photo(100 + i) for i in range(10)], "label": list(range(10))}
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(folder))
    return folder


@pytest.fixture
def shards(tmp_path) -> str:
    """Two WebDataset shards, samples keyed jpg or png, and the brace pattern that names both."""
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(2):
        with tarfile.open(folder / f"train-{shard:05d}.tar", "w") as tar:
            for i in range(8):
                key, ext = f"{shard:02d}{i:04d}", "png" if i % 2 else "jpg"
                image = photo(200 + 10 * shard + i)
                if ext == "jpg":
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG")
                    data = buffer.getvalue()
                else:
                    data = png_bytes(image)
                for name, payload in ((f"{key}.{ext}", data), (f"{key}.txt", f"caption {key}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(folder / "train-{00000..00001}.tar")


def train_argv(data: str, output: Path, *extra: str) -> list[str]:
    return ["train", "--no-progress", "--data", data, "--output", str(output), "--steps", "3", "--resolution", "32",
            "--eval-resolution", "32", "--final-resolution", "0", "--batch-size", "2", "--checkpoint-every", "3",
            "--sample-every", "100", "--eval-every", "100", *extra]


def test_brace_patterns_expand_with_padding():
    assert list(expand_braces("s-{008..011}.tar")) == ["s-008.tar", "s-009.tar", "s-010.tar", "s-011.tar"]
    assert list(expand_braces("{a,b}/x-{1..2}.tar")) == ["a/x-1.tar", "a/x-2.tar", "b/x-1.tar", "b/x-2.tar"]


def test_parquet_with_an_image_column_of_another_name(parquet_folder, tmp_path):
    source = open_source(str(parquet_folder))
    assert isinstance(source, MapSource) and len(source) == 12
    assert source.image(0).size == (48, 40)
    assert main(train_argv(str(parquet_folder), tmp_path / "run")) == 0
    metrics = json.loads((tmp_path / "run" / run_files.METRICS_FILE).read_text())
    assert metrics["steps"] == 3 and "parquet" in metrics["data"]
    with pytest.raises(ValueError, match="'nope' is not a column.*picture, caption"):
        open_source(str(parquet_folder), DataOptions(image_column="nope"))


def test_save_to_disk_folder_and_held_out_images_are_never_trained_on(saved_dataset, tmp_path):
    source = open_source(str(saved_dataset))
    train, held_out = source.split(0.3)
    assert held_out and not set(train) & set(held_out) and sorted(train + held_out) == list(range(10))
    assert all(bucket(str(i).encode()) < 0.3 for i in held_out)
    assert main(train_argv(str(saved_dataset), tmp_path / "run", "--val-fraction", "0.3")) == 0
    assert (tmp_path / "run" / run_files.MODEL_DIR / "config.json").is_file()


def test_webdataset_shards_by_brace_pattern_stream_disjoint_shares(shards, tmp_path):
    source = open_source(shards)
    assert isinstance(source, StreamSource)
    keys = [key for key, _ in source.examples()]
    assert len(keys) == 16 and len(set(keys)) == 16
    shares = [{key for key, _ in source.examples(rank, 2)} for rank in range(2)]
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == set(keys)
    data = load_image_data(shards, 32, val_fraction=0.25, eval_crops_per_image=1)
    assert len(data.val_crops) >= 1 and data.streaming
    held_out = {key for key in keys if bucket(key) < 0.25}
    crops = StreamCrops(source, 32, 0.25, seed=0)
    seen = list(islice(crops.examples(), 40))
    assert len(seen) == 40  # it cycles through epochs, skipping the held-out keys
    first = next(crops.batches(4))
    again = next(StreamCrops(source, 32, 0.25, seed=0).batches(4))
    assert first.shape == (4, 3, 32, 32) and (first == again).all()  # a pure function of the seed
    assert held_out  # the fixture's keys put some images in the held-out share
    assert main(train_argv(shards, tmp_path / "run", "--val-fraction", "0.25")) == 0


def test_resume_of_a_stream_continues_where_it_stopped(shards):
    source = open_source(shards)
    straight = StreamCrops(source, 32, 0.25, seed=3).batches(2)
    batches = [next(straight) for _ in range(5)]
    resumed = StreamCrops(source, 32, 0.25, seed=3).batches(2, start=3)
    assert (next(resumed) == batches[3]).all() and (next(resumed) == batches[4]).all()


def test_eval_and_calibrate_read_the_same_sources(parquet_folder, tmp_path, capsys):
    from factories import tiny_vae

    tiny_vae().save_pretrained(tmp_path / "vae")
    assert main(["eval", str(tmp_path / "vae"), "--data", str(parquet_folder), "--resolution", "32",
                 "--metrics", "psnr,ssim", "--output", str(tmp_path / "eval")]) == 0
    assert "12 images" in capsys.readouterr().out
    assert main(["calibrate", str(tmp_path / "vae"), "--data", str(parquet_folder), "--crops", "4",
                 "--resolution", "32"]) == 0
    assert "_calibration" in (tmp_path / "vae" / "config.json").read_text()


def test_train_with_gradient_checkpointing_and_data_workers(parquet_folder, tmp_path):
    argv = train_argv(str(parquet_folder), tmp_path / "run", "--gradient-checkpointing", "--num-workers", "1")
    assert main(argv) == 0
    config = json.loads((tmp_path / "run" / run_files.TRAIN_CONFIG).read_text())
    assert config["gradient_checkpointing"] is True and config["num_workers"] == 1


@pytest.mark.slow
def test_a_teacher_named_by_hub_id_exists_only_on_the_hub(tmp_path):
    """--teacher ORG/NAME@REVISION through huggingface_hub, from a Hub-compatible server on loopback."""
    import subprocess
    import sys

    from factories import tiny_vae
    from hub_server import FakeHub

    teacher = tiny_vae(block_out_channels=(32, 32), scaling_factor=0.3)
    teacher.save_pretrained(tmp_path / "local-teacher")
    with FakeHub() as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="hf_loopbacktoken0123456789",
                   TQDM_DISABLE="1")
        pushed = subprocess.run([sys.executable, "-m", "sd_custom_vae", "push", str(tmp_path / "local-teacher"),
                                 "org/teacher-vae"], capture_output=True, text=True, env=env, timeout=300)
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        import shutil

        shutil.rmtree(tmp_path / "local-teacher")  # the teacher now exists only on the Hub
        trained = subprocess.run(
            [sys.executable, "-m", "sd_custom_vae", *train_argv("builtin", tmp_path / "run", "--config", "student",
             "--teacher", "org/teacher-vae")],
            capture_output=True, text=True, env=env, timeout=600,
        )
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / run_files.METRICS_FILE).read_text())
    assert metrics["teacher"] == "org/teacher-vae" and metrics["scaling_factor"] == pytest.approx(0.3)


PROBE = """
import json, sys
from accelerate import Accelerator
from sd_custom_vae.data import StreamCrops
from sd_custom_vae.data.opener import open_source
from sd_custom_vae.data.sources import bucket

accelerator = Accelerator(cpu=True)
source = open_source(sys.argv[1])
crops = StreamCrops(source, 32, 0.25, seed=0, rank=accelerator.process_index, processes=accelerator.num_processes)
keys = [key.decode() for key, _ in source.examples(accelerator.process_index, accelerator.num_processes, seed=0)]
trained = [key.decode() for _, key, _ in crops.examples(epochs=1)]
with open(f"{sys.argv[2]}/rank{accelerator.process_index}.json", "w") as f:
    json.dump({"share": keys, "trained": trained, "world": accelerator.num_processes}, f)
"""


@pytest.mark.slow
def test_each_process_of_accelerate_launch_streams_its_own_share(shards, tmp_path):
    import subprocess
    import sys

    (tmp_path / "probe.py").write_text(PROBE)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(tmp_path / "probe.py"), shards, str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert all(rank["world"] == 2 for rank in ranks)
    shares = [set(rank["share"]) for rank in ranks]
    all_keys = {key.decode() for key, _ in open_source(shards).examples()}
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == all_keys
    trained = [set(rank["trained"]) for rank in ranks]
    held_out = {key for key in all_keys if bucket(key.encode()) < 0.25}
    assert trained[0] <= shares[0] and trained[1] <= shares[1] and not (trained[0] | trained[1]) & held_out
    assert trained[0] | trained[1] | held_out == all_keys
