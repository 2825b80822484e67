import pytest
import torch
import torch.nn.functional as F

from sd_custom_vae.models import ScratchVAE
from sd_custom_vae.training.initialisation import check_resizing_start, start_as_resizing

TINY_DEFAULT = dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                    mid_block_add_attention=False)


def photo_like(size: int, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields with some texture, in [-1, 1]: what the init has to carry without GroupNorm's help."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(2, 3, size // 16, size // 16, generator=generator) * 1.8 - 0.9
    fine = 0.1 * torch.randn(2, 3, size, size, generator=generator)
    return (F.interpolate(coarse, size=(size, size), mode="bilinear") + fine).clamp(-1, 1)


@pytest.mark.parametrize("architecture", [TINY_DEFAULT, dict(TINY_DEFAULT, mid_block_add_attention=True,
                                                                layers_per_block=2, norm_num_groups=4)])
@torch.no_grad()
def test_the_resizing_start_computes_area_down_and_nearest_up(architecture):
    torch.manual_seed(0)
    vae = ScratchVAE(**architecture)
    start_as_resizing(vae)
    images = photo_like(64)
    mean, logvar = vae.encode(images)
    area = F.avg_pool2d(images, 8)
    # the relative error of each GroupNorm's variance, E[x²] / 2K², is the only error: under 1 % of the signal
    assert (mean[:, :3] - area).abs().max() < 0.01
    assert mean[:, 3:].abs().max() < 1e-6  # the free latent channel starts empty, for training to fill
    assert logvar.max() < -9
    reconstruction = vae.decode(mean)
    assert (reconstruction - F.interpolate(area, scale_factor=8, mode="nearest")).abs().max() < 0.02


def test_training_moves_every_part_from_the_resizing_start():
    torch.manual_seed(0)
    vae = ScratchVAE(**TINY_DEFAULT)
    start_as_resizing(vae)
    images = photo_like(32)
    reconstruction, mean, logvar = vae(images)
    F.l1_loss(reconstruction, images).backward()
    # the zeroed residual branches and the free latent channel get gradients: nothing is stuck at its start
    branch = vae.decoder.up_blocks[3].resnets[0].conv2.weight.grad
    assert branch is not None and branch.abs().sum() > 0
    assert vae.decoder.conv_in.weight.grad[:, 3].abs().sum() > 0


@pytest.mark.parametrize("architecture, problem", [
    (dict(TINY_DEFAULT, norm_num_groups=16), "groups of an even size of at least 4"),
    (dict(TINY_DEFAULT, block_out_channels=(8, 16)), "at least 12 channels"),
    (dict(TINY_DEFAULT, latent_channels=2), "at least 3 latent channels"),
])
def test_architectures_that_cannot_start_as_resizing_are_refused_with_the_reason(architecture, problem):
    config = dict(ScratchVAE().config, **architecture)
    with pytest.raises(ValueError, match=problem):
        check_resizing_start(config)


def test_the_default_preset_and_the_student_start_as_resizing_and_decoder_finetune_from_its_teacher():
    from sd_custom_vae.training.objectives import student_architecture
    from sd_custom_vae.training.presets import load_config

    assert load_config().init == "resizing"
    check_resizing_start(dict(ScratchVAE().config, **load_config().model))
    assert load_config(None, mode="distill", teacher="t").init == "random"  # the preset's start is not the mode's
    assert load_config("student", teacher="t").init == "resizing"
    teacher = dict(ScratchVAE().config, **load_config().model)
    check_resizing_start(student_architecture(teacher, load_config("student", teacher="t").student_width))
    # SD's own VAE as a teacher: its student can start as resizing too (an even number of channels per group)
    sd = dict(ScratchVAE().config, block_out_channels=(128, 256, 512, 512), norm_num_groups=32)
    for width in (0.25, 0.3, 0.5):
        check_resizing_start(student_architecture(sd, width))
    with pytest.raises(ValueError, match="not decoder-finetune"):
        load_config(None, mode="decoder-finetune", teacher="t", init="resizing")


@torch.no_grad()
def test_a_student_distilled_with_the_resizing_start_begins_as_resizing():
    from sd_custom_vae.models import CustomAutoencoderKL
    from sd_custom_vae.training.config import TrainConfig
    from sd_custom_vae.training.losses import VAELoss
    from sd_custom_vae.training.objectives import Distill

    teacher = CustomAutoencoderKL(**TINY_DEFAULT)
    config = TrainConfig(mode="distill", teacher="in memory", init="resizing")
    objective = Distill(config, VAELoss(config), teacher, torch.device("cpu"))
    student = ScratchVAE(**objective.architecture())
    objective.prepare(student)
    images = photo_like(64)
    assert (student.encode(images)[0][:, :3] - F.avg_pool2d(images, 8)).abs().max() < 0.01
