import pytest
import torch
import torch.nn.functional as F
from factories import TINY, tiny_vae

from sd_custom_vae import CustomAutoencoderKL, ScratchVAE, reparameterize
from sd_custom_vae.network import AttentionBlock, ResidualBlock, Upsample


def test_scratch_vae_forward_returns_reconstruction_mean_logvar():
    vae = ScratchVAE(**TINY)
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    reconstruction, mean, logvar = vae(image)
    assert reconstruction.shape == image.shape
    assert mean.shape == logvar.shape == (2, 4, 16, 24)
    (reconstruction.square().mean() + mean.square().mean()).backward()
    assert all(p.grad is not None for p in vae.encoder.parameters())


def test_module_names_are_diffusers_names():
    keys = ScratchVAE(**TINY).state_dict().keys()
    assert "encoder.down_blocks.0.resnets.0.conv1.weight" in keys
    assert "encoder.mid_block.attentions.0.to_q.weight" in keys
    assert "decoder.mid_block.attentions.0.to_out.0.bias" in keys
    assert "decoder.up_blocks.0.resnets.0.conv_shortcut.weight" not in keys  # same channels: no shortcut conv
    assert "decoder.up_blocks.1.resnets.0.conv_shortcut.weight" in keys  # 64 → 32 channels
    assert "encoder.down_blocks.0.downsamplers.0.conv.weight" in keys
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in keys
    assert "encoder.conv_norm_out.weight" in keys


def test_reparameterize_draws_from_the_distribution_and_keeps_gradients():
    mean = torch.full((200_000,), 1.5, requires_grad=True)
    logvar = torch.full((200_000,), 2 * torch.log(torch.tensor(0.5)).item(), requires_grad=True)
    z = reparameterize(mean, logvar, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(1.5, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)
    z.sum().backward()
    assert mean.grad is not None and logvar.grad is not None


def test_attention_is_single_head_softmax_over_positions():
    block = AttentionBlock(8, groups=2).eval()
    x = torch.randn(1, 8, 3, 5)
    tokens = block.group_norm(x).flatten(2).transpose(1, 2)
    q, k, v = block.to_q(tokens), block.to_k(tokens), block.to_v(tokens)
    weights = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=-1)
    expected = x + block.to_out[0](weights @ v).transpose(1, 2).reshape(1, 8, 3, 5)
    torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upsample_phases_equal_nearest_then_conv_values_and_gradients(memory_format):
    torch.manual_seed(0)
    upsample = Upsample(8)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=memory_format).requires_grad_()
    conv = upsample.conv  # a 3x3 conv of the x2 enlargement, computed without building it
    literal = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), conv.weight, conv.bias, padding=1)
    got = upsample(x)
    assert got.shape == (2, 8, 10, 14) and got.is_contiguous(memory_format=memory_format)
    torch.testing.assert_close(got, literal, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(literal)
    expected_grads = torch.autograd.grad((literal * weights).sum(), [x, upsample.conv.weight, upsample.conv.bias])
    grads = torch.autograd.grad((got * weights).sum(), [x, upsample.conv.weight, upsample.conv.bias])
    for expected, actual in zip(expected_grads, grads, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


def test_residual_block_uses_a_shortcut_conv_only_when_channels_change():
    assert ResidualBlock(32, 32, 8).conv_shortcut is None  # as diffusers': nothing for PEFT to match
    assert isinstance(ResidualBlock(32, 64, 8).conv_shortcut, torch.nn.Conv2d)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(block_out_channels=(32, 60)), "block_out_channels.*60.*norm_num_groups=8"),
        (dict(norm_num_groups=0), "norm_num_groups must be a positive integer, got 0"),
        (dict(block_out_channels=()), "block_out_channels must list at least one level"),
        (dict(latent_channels=-4), "latent_channels must be a positive integer, got -4"),
    ],
)
def test_bad_config_is_a_clear_value_error(overrides, message):
    for cls in (ScratchVAE, CustomAutoencoderKL):
        with pytest.raises(ValueError, match=message):
            cls(**{**TINY, **overrides})


def test_bad_input_is_a_clear_value_error():
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"multiples of 2 .*got 33×32"):
        vae.encode(torch.zeros(1, 3, 33, 32))
    with pytest.raises(ValueError, match="image has 4 channels, expected 3"):
        vae.encode(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="latents has 3 channels, expected 4"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="4-D tensor"):
        vae.encode(torch.zeros(3, 32, 32))
