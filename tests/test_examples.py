"""The examples run as written (a few steps each): they are documentation that must not rot."""

import importlib.util
from pathlib import Path

import pytest
from factories import tiny_vae
from tiny_pipelines import tiny_sd_pipeline

from sd_custom_vae import CustomAutoencoderKL

EXAMPLES = Path(__file__).parents[1] / "examples"
FAST = ["--steps", "3"]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_and_convert_example(tmp_path, capsys):
    load_example("train_and_convert").main([*FAST, "--output", str(tmp_path / "run")])
    assert "LDM round trip identical: True" in capsys.readouterr().out
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert (tmp_path / "run" / "vae-ldm.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::sd_custom_vae.models.pipeline.LatentScaleWarning")
def test_distill_student_example_distils_and_generates(tmp_path, capsys):
    teacher = tmp_path / "teacher"
    # The student preset validates at 256 px: a narrow three-level teacher without mid-block attention keeps
    # the teacher's share of that cheap (the two-level test VAE's latents would be 128²)
    narrow = tiny_vae(scaling_factor=0.7, mid_block_add_attention=False, block_out_channels=(16, 32, 32))
    narrow.save_pretrained(teacher)
    pipeline = tmp_path / "sd"
    tiny_sd_pipeline(tiny_vae(seed=1, scaling_factor=0.7), tmp_path / "tokenizer").save_pretrained(pipeline)

    load_example("distill_student").main(
        ["--teacher", str(teacher), "--model", str(pipeline), *FAST, "--output", str(tmp_path / "student")]
    )
    out = capsys.readouterr().out
    assert "latent err" in out and "student" in out
    assert (tmp_path / "student" / "student_dog.png").is_file()
    student = CustomAutoencoderKL.from_pretrained(tmp_path / "student" / "model")
    assert student.config.scaling_factor == 0.7  # the teacher's latent space, inherited
    assert student.num_parameters() < tiny_vae().num_parameters()
