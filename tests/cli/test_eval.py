"""sd-custom-vae eval: the side-by-side table and grid."""

import json

import torch
from factories import TINY

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main
from sd_custom_vae.evaluation.quality import Report, format_table, reconstruction_quality, teacher_agreement


def save(tmp_path, name, seed, **overrides):
    torch.manual_seed(seed)
    model = CustomAutoencoderKL(**{**TINY, **overrides})
    model.save_pretrained(tmp_path / name)
    return model


def test_eval_prints_the_table_and_writes_the_grid(tmp_path, capsys):
    teacher = save(tmp_path, "teacher", 0)
    save(tmp_path, "student", 1, block_out_channels=(16, 32))
    output = tmp_path / "out"
    code = main(["eval", str(tmp_path / "teacher"), str(tmp_path / "student"), "--teacher", str(tmp_path / "teacher"),
                 "--resolution", "32", "--crops-per-image", "1", "--output", str(output)])
    assert code == 0
    printed = capsys.readouterr().out
    for header in ("PSNR dB", "SSIM", "enc ms/img", "dec ms/img", "latent err", "dec(teacher z) dB", "params"):
        assert header in printed
    report = json.loads((output / "eval.json").read_text())
    first, second, resizing = report["vaes"]
    assert first["latent_relative_error"] == 0.0  # the teacher against itself
    assert first["teacher_latent_psnr"] == first["teacher_psnr"] == first["psnr"]
    assert second["parameters"] < first["parameters"] and second["latent_relative_error"] > 0
    # what a VAE has to beat, measured on the same crops: one row per downsampling factor, no latent space
    assert resizing["name"] == "resizing ×2 (area down, bicubic up)" and resizing["parameters"] == 0
    assert {"psnr", "ssim"} <= set(resizing) and "latent_relative_error" not in resizing
    assert "resizing ×2" in printed
    assert (output / "eval.png").exists()
    assert report["crops"] == 7  # one crop from each built-in validation photo
    del teacher


def test_teacher_agreement_of_a_perfect_student_is_perfect():
    torch.manual_seed(0)
    teacher = CustomAutoencoderKL(**TINY).eval()
    student = teacher.to_scratch_vae().eval()
    crops = torch.rand(3, 3, 16, 16) * 2 - 1
    agreement = teacher_agreement(student, teacher, crops)
    assert agreement["latent_relative_error"] < 1e-6
    quality, _ = reconstruction_quality(student, crops)
    assert abs(agreement["teacher_latent_psnr"] - quality["psnr"]) < 1e-4


def test_table_aligns_and_skips_missing_columns():
    table = format_table([Report("a", 1_500_000, {"psnr": 25.0, "ssim": 0.9}), Report("bb", 2_000, {"psnr": 20.5})])
    lines = table.splitlines()
    assert "ST-LPIPS" not in lines[0] and len({len(line) for line in lines}) == 1
    assert "1.50M" in lines[2] and lines[3].rstrip().endswith("-")


def _photos(folder, count):
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_data_options_that_mean_nothing_for_the_data_are_refused(tmp_path, capsys):
    from helpers import fails

    save(tmp_path, "vae", 0)
    photos = _photos(tmp_path / "photos", 2)
    flags = ["eval", str(tmp_path / "vae"), "--resolution", "32", "--metrics", "psnr", "--output", str(tmp_path / "e")]
    fails([*flags, "--data", str(photos), "--data-split", "test"], capsys,
          f"--data {photos} is a folder of image files: --data-split test means nothing for it")
    fails([*flags, "--data", str(photos), "--data-revision", "v2"], capsys, "--data-revision v2 means nothing")
    fails([*flags, "--data-split", "test"], capsys, "--data builtin is the built-in photos: --data-split test")
    assert not (tmp_path / "e").exists()


def test_rfid_from_one_crop_is_not_reported(tmp_path, capsys):
    save(tmp_path, "vae", 0)
    photos = _photos(tmp_path / "photos", 1)
    assert main(["eval", str(tmp_path / "vae"), "--data", str(photos), "--resolution", "32", "--crops-per-image", "1",
                 "--metrics", "psnr,rfid", "--output", str(tmp_path / "e")]) == 0
    assert "rfid: not measured: rFID needs at least 2 images (crops), got 1" in capsys.readouterr().out
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert "rfid" in report["not_measured"] and not any("rfid" in vae for vae in report["vaes"])


def test_a_full_disk_leaves_the_earlier_eval_whole(tmp_path, capsys, monkeypatch):
    import errno

    from helpers import digest, fails

    from sd_custom_vae.evaluation import figures

    save(tmp_path, "vae", 0)
    flags = ["eval", str(tmp_path / "vae"), "--resolution", "32", "--metrics", "psnr", "--crops-per-image", "1",
             "--output", str(tmp_path / "e")]
    assert main(flags) == 0
    before = digest(tmp_path / "e")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "e" / "eval.png"))

    monkeypatch.setattr(figures, "save_png", full)
    fails([*flags, "--overwrite"], capsys, "disk full", "files that were there are unchanged", code=1)
    assert digest(tmp_path / "e") == before  # not a new eval.json beside the old eval.png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "vae"]  # no staging folder left
    (tmp_path / "e" / "notes.txt").write_text("mine")
    fails([*flags, "--overwrite"], capsys, "holds other files than eval's (notes.txt)")
