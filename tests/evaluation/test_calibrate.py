"""Calibration of the latent scale: what it measures, what it writes, and the calibrate command."""

import json

import numpy as np
import pytest
import torch
from factories import tiny_vae
from PIL import Image

from conversion import as_checkpoint, save_checkpoint
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main
from sd_custom_vae.data import Augmentation, RandomCrops, load_images
from sd_custom_vae.data.opener import find_images
from sd_custom_vae.evaluation.calibrate import calibrate
from sd_custom_vae.models.latent_space import CALIBRATION_KEY, is_calibrated


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(3):
        # smooth colour fields with some noise: image-like statistics, not white noise
        base = rng.integers(0, 256, (4, 5, 3)).astype(np.uint8)
        image = Image.fromarray(base).resize((48, 40), Image.BICUBIC)
        noisy = np.clip(np.asarray(image, dtype=np.int16) + rng.integers(-20, 21, (40, 48, 3)), 0, 255)
        Image.fromarray(noisy.astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def posterior_of_crops(vae, folder, count: int):
    """An independent draw of the crops calibration measures."""
    images = load_images(find_images(folder), 32)
    crops = RandomCrops(images, 32, seed=7, augmentation=Augmentation(flip=False), length=count)
    with torch.no_grad():
        return vae.encode(torch.stack([crops[i] for i in range(count)])).latent_dist


def test_calibrate_sets_one_over_the_std_of_sampled_latents(image_folder):
    vae = tiny_vae()
    result = calibrate(vae, image_folder, resolution=32, crops=24, batch_size=5)
    posterior = posterior_of_crops(vae, image_folder, 24)
    z = posterior.sample(generator=torch.Generator().manual_seed(7))
    assert result.crops == 24 and result.shift_factor is None
    assert result.scaling_factor == pytest.approx(1 / z.std().item(), rel=0.03)
    assert result.latent_mean == pytest.approx(z.mean().item(), abs=0.03 * z.std().item())
    # samples, as img2img encodes, not means: the posterior's own spread counts
    assert result.scaling_factor < 0.97 / posterior.mean.std().item()

    shifted = calibrate(vae, image_folder, resolution=32, crops=24, batch_size=5, shift=True)
    assert shifted.shift_factor == result.latent_mean and shifted.scaling_factor == result.scaling_factor


def test_calibrate_command_updates_a_folder_in_place(image_folder, tmp_path, capsys):
    vae_folder = tmp_path / "vae"
    tiny_vae().save_pretrained(vae_folder)
    weights = (vae_folder / "diffusion_pytorch_model.safetensors").read_bytes()
    argv = ["calibrate", str(vae_folder), "--data", str(image_folder), "--crops", "10", "--resolution", "32"]
    assert main([*argv, "--batch-size", "4", "--shift"]) == 0
    assert "wrote" in capsys.readouterr().out

    config = json.loads((vae_folder / "config.json").read_text())
    record = config[CALIBRATION_KEY]
    assert config["scaling_factor"] == record["scaling_factor"] != 0.18215
    assert config["shift_factor"] == record["shift_factor"] == record["latent_mean"]
    assert record["crops"] == 10 and record["resolution"] == 32 and record["latents"] == "sample"
    assert (vae_folder / "diffusion_pytorch_model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in vae_folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]

    expected = calibrate(tiny_vae(), image_folder, resolution=32, crops=10, batch_size=4, shift=True)
    assert config["scaling_factor"] == expected.scaling_factor  # same seed, same crops, same samples
    reloaded = CustomAutoencoderKL.from_pretrained(vae_folder)
    assert is_calibrated(reloaded.config) and reloaded.config.scaling_factor == expected.scaling_factor


def test_calibrate_command_on_a_single_file_needs_an_output_folder(image_folder, tmp_path, capsys):
    file = tmp_path / "vae.safetensors"
    vae = tiny_vae()
    save_checkpoint(as_checkpoint(vae.state_dict(), dict(vae.config)), file, to="ldm")  # as A1111 files name keys
    argv = ["calibrate", str(file), "--data", str(image_folder), "--crops", "4", "--resolution", "32"]
    assert main(argv) == 2
    assert "pass --output" in capsys.readouterr().err
    assert main([*argv, "--output", str(tmp_path / "calibrated")]) == 0
    saved = CustomAutoencoderKL.from_pretrained(tmp_path / "calibrated")
    assert is_calibrated(saved.config) and saved.config[CALIBRATION_KEY]["crops"] == 4


def test_calibrate_command_refuses_bad_input_before_writing(image_folder, tmp_path, capsys):
    vae_folder = tmp_path / "vae"
    tiny_vae().save_pretrained(vae_folder)
    config = (vae_folder / "config.json").read_text()
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", str(tmp_path / "missing"), "--data", str(image_folder)]) == 2
    assert "no such VAE file or folder" in capsys.readouterr().err
    assert main(["calibrate", str(vae_folder), "--data", str(tmp_path / "empty"), "--resolution", "32"]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["calibrate", str(vae_folder), "--data", str(image_folder), "--resolution", "33"]) == 2
    assert "multiple of the VAE's downsampling factor 2" in capsys.readouterr().err
    assert (vae_folder / "config.json").read_text() == config
