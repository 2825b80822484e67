"""The contract diffusers pipelines rely on when they call ``pipe.vae``."""

import json

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from factories import TINY, stock_autoencoder_kl

from sd_custom_vae import CustomAutoencoderKL, ScratchVAE


@pytest.fixture
def image():
    return torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1


def test_encode_returns_diffusers_latent_distribution(vae, image):
    with torch.no_grad():
        output = vae.encode(image)
    assert isinstance(output, AutoencoderKLOutput)
    posterior = output.latent_dist
    assert isinstance(posterior, DiagonalGaussianDistribution)
    assert posterior.mean.shape == posterior.std.shape == (2, 4, 16, 24)
    assert torch.equal(posterior.mode(), posterior.mean)
    assert posterior.kl().shape == (2,)
    first = posterior.sample(generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, posterior.sample(generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(first, posterior.mean)
    (as_tuple,) = vae.encode(image, return_dict=False)
    assert torch.equal(as_tuple.mean, posterior.mean)


def test_decode_returns_decoder_output(vae):
    latents = torch.randn(2, 4, 8, 12)
    with torch.no_grad():
        output = vae.decode(latents, generator=torch.Generator().manual_seed(0))
        (as_tuple,) = vae.decode(latents, return_dict=False)
    assert isinstance(output, DecoderOutput)
    assert output.sample.shape == (2, 3, 16, 24)
    assert torch.equal(as_tuple, output.sample)


def test_forward_like_autoencoder_kl(vae, image):
    with torch.no_grad():
        deterministic = vae(image).sample
        assert torch.equal(deterministic, vae.decode(vae.encode(image).latent_dist.mode()).sample)
        sampled = vae(image, sample_posterior=True, generator=torch.Generator().manual_seed(1), return_dict=False)[0]
    assert sampled.shape == image.shape and not torch.equal(sampled, deterministic)


def test_config_carries_what_pipelines_read():
    config = CustomAutoencoderKL(**TINY).config
    assert config.scaling_factor == 0.18215
    assert config.shift_factor is None and config.latents_mean is None and config.latents_std is None
    assert config.force_upcast is True and config.sample_size == 32
    assert list(config.block_out_channels) == [32, 64] and config.latent_channels == 4
    defaults = AutoencoderKL().config
    ours = CustomAutoencoderKL().config
    for key in ("scaling_factor", "force_upcast", "sample_size", "latent_channels", "layers_per_block",
                "norm_num_groups"):
        assert ours[key] == defaults[key], key


def test_latents_are_as_much_smaller_as_pipelines_compute_from_the_config(vae, image):
    # StableDiffusionPipeline's vae_scale_factor, from the config alone
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    with torch.no_grad():
        latents = vae.encode(image).latent_dist.mean
    assert image.shape[-2] // latents.shape[-2] == image.shape[-1] // latents.shape[-1] == vae_scale_factor
    assert vae.downsampling_factor == vae_scale_factor


def test_slicing_changes_nothing(vae, image):
    latents = torch.randn(3, 4, 8, 12)
    with torch.no_grad():
        expected_mean, expected_image = vae.encode(image).latent_dist.mean, vae.decode(latents).sample
        vae.enable_slicing()
        assert vae.use_slicing
        torch.testing.assert_close(vae.encode(image).latent_dist.mean, expected_mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(vae.decode(latents).sample, expected_image, rtol=0, atol=1e-5)
        vae.disable_slicing()
    assert not vae.use_slicing


def test_save_and_load_pretrained_round_trip_in_safetensors(vae, tmp_path):
    vae.register_to_config(scaling_factor=0.5)
    vae.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "CustomAutoencoderKL"
    loaded = CustomAutoencoderKL.from_pretrained(tmp_path)
    assert loaded.config.scaling_factor == 0.5
    for key, tensor in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key


def test_from_pretrained_converts_a_stock_autoencoder_kl_folder(tmp_path):
    stock = stock_autoencoder_kl(TINY)
    stock.save_pretrained(tmp_path)
    ours = CustomAutoencoderKL.from_pretrained(tmp_path)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(image).latent_dist.mean, stock.encode(image).latent_dist.mean)


def test_the_two_faces_share_weights_and_compute_the_same(vae, image):
    scratch = vae.to_scratch_vae()
    assert isinstance(scratch, ScratchVAE) and scratch.state_dict().keys() == vae.state_dict().keys()
    with torch.no_grad():
        mean, _ = scratch.encode(image)
        assert torch.equal(mean, vae.encode(image).latent_dist.mean)
        assert torch.equal(scratch.decode(mean), vae.decode(mean).sample)
    back = CustomAutoencoderKL.from_scratch_vae(scratch, scaling_factor=0.3)
    assert back.config.scaling_factor == 0.3
    for key, tensor in vae.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor)


def test_dtype_and_device_follow_to(vae):
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"
    half = vae.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        sample = half.decode(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16)).sample
    assert sample.dtype == torch.bfloat16 and torch.isfinite(sample).all()
