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
    first, second = report["vaes"]
    assert first["latent_relative_error"] == 0.0  # the teacher against itself
    assert first["teacher_latent_psnr"] == first["teacher_psnr"] == first["psnr"]
    assert second["parameters"] < first["parameters"] and second["latent_relative_error"] > 0
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
