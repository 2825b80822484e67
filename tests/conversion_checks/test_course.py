"""The course's layout, both ways, against a reimplementation of its modules written here from their description
(``VAE_Encoder``/``VAE_Decoder`` as ``nn.Sequential``, ``VAE_ResidualBlock``, ``VAE_AttentionBlock`` with one fused
``in_proj``, 0.18215 baked in, the noise passed to the encoder, torch's default GroupNorm epsilon)."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from factories import tiny_vae
from safetensors.torch import load_file
from torch import nn

import conversion
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main

SCALE = 0.18215


class SelfAttention(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.in_proj = nn.Linear(channels, 3 * channels)
        self.out_proj = nn.Linear(channels, channels)

    def forward(self, x):  # (batch, tokens, channels), one head
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(x.shape[-1]), dim=-1)
        return self.out_proj(weights @ v)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(32, channels)
        self.attention = SelfAttention(channels)

    def forward(self, x):
        n, c, h, w = x.shape
        tokens = self.groupnorm(x).view(n, c, h * w).transpose(-1, -2)
        return self.attention(tokens).transpose(-1, -2).reshape(n, c, h, w) + x


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.groupnorm_1 = nn.GroupNorm(32, in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.groupnorm_2 = nn.GroupNorm(32, out_channels)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.residual_layer = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv_1(F.silu(self.groupnorm_1(x)))
        return self.conv_2(F.silu(self.groupnorm_2(h))) + self.residual_layer(x)


class Encoder(nn.Sequential):
    def __init__(self):
        super().__init__(
            nn.Conv2d(3, 128, 3, padding=1), ResidualBlock(128, 128), ResidualBlock(128, 128),
            nn.Conv2d(128, 128, 3, stride=2), ResidualBlock(128, 256), ResidualBlock(256, 256),
            nn.Conv2d(256, 256, 3, stride=2), ResidualBlock(256, 512), ResidualBlock(512, 512),
            nn.Conv2d(512, 512, 3, stride=2), ResidualBlock(512, 512), ResidualBlock(512, 512),
            ResidualBlock(512, 512), AttentionBlock(512), ResidualBlock(512, 512),
            nn.GroupNorm(32, 512), nn.SiLU(), nn.Conv2d(512, 8, 3, padding=1), nn.Conv2d(8, 8, 1),
        )

    def forward(self, x, noise):
        for module in self:
            if getattr(module, "stride", None) == (2, 2):
                x = F.pad(x, (0, 1, 0, 1))
            x = module(x)
        mean, logvar = x.chunk(2, dim=1)
        return (mean + logvar.clamp(-30, 20).exp().sqrt() * noise) * SCALE


class Decoder(nn.Sequential):
    def __init__(self):
        levels = [ResidualBlock(512, 512), ResidualBlock(512, 512), ResidualBlock(512, 512),
                  nn.Upsample(scale_factor=2), nn.Conv2d(512, 512, 3, padding=1),
                  ResidualBlock(512, 512), ResidualBlock(512, 512), ResidualBlock(512, 512),
                  nn.Upsample(scale_factor=2), nn.Conv2d(512, 512, 3, padding=1),
                  ResidualBlock(512, 256), ResidualBlock(256, 256), ResidualBlock(256, 256),
                  nn.Upsample(scale_factor=2), nn.Conv2d(256, 256, 3, padding=1),
                  ResidualBlock(256, 128), ResidualBlock(128, 128), ResidualBlock(128, 128)]
        super().__init__(
            nn.Conv2d(4, 4, 1), nn.Conv2d(4, 512, 3, padding=1), ResidualBlock(512, 512), AttentionBlock(512),
            ResidualBlock(512, 512), *levels, nn.GroupNorm(32, 128), nn.SiLU(), nn.Conv2d(128, 3, 3, padding=1),
        )

    def forward(self, z):
        z = z / SCALE
        for module in self:
            z = module(z)
        return z


class CourseVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()


@pytest.fixture(scope="module")
def course_file(tmp_path_factory):
    torch.manual_seed(0)
    course = CourseVAE().eval()
    with torch.no_grad():  # GroupNorms away from (1, 0), so that a swapped weight and bias would show
        for module in course.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.normal_(1.0, 0.1)
                module.bias.normal_(0.0, 0.1)
    path = tmp_path_factory.mktemp("course") / "course_vae.pt"
    torch.save(course.state_dict(), path)
    return course, path


def test_course_checkpoint_converts_and_computes_what_the_course_computes(course_file, tmp_path, capsys):
    course, path = course_file
    assert main(["convert", str(path), str(tmp_path / "vae"), "--to", "diffusers"]) == 0
    out = capsys.readouterr().out
    assert "course scheme" in out and "epsilon 1e-05" in out and "1e-06" in out
    stock = AutoencoderKL.from_pretrained(tmp_path / "vae").eval()  # plain diffusers
    assert stock.config.scaling_factor == SCALE

    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        posterior = stock.encode(image).latent_dist
        expected = (posterior.mean + posterior.std * noise) * stock.config.scaling_factor
        latents = course.encoder(image, noise)
        torch.testing.assert_close(latents, expected, rtol=0, atol=2e-4)  # GroupNorm epsilon 1e-5 against 1e-6
        torch.testing.assert_close(course.decoder(latents), stock.decode(latents / SCALE).sample, rtol=0, atol=2e-4)


def test_export_loads_strictly_into_the_course_modules_and_round_trips_bit_exactly(course_file, tmp_path, capsys):
    course, path = course_file
    assert main(["convert", str(path), str(tmp_path / "vae"), "--to", "diffusers"]) == 0
    assert main(["convert", str(tmp_path / "vae"), str(tmp_path / "back.safetensors"), "--to", "course"]) == 0
    assert "epsilon" in capsys.readouterr().out
    back = load_file(tmp_path / "back.safetensors")
    reloaded = CourseVAE()
    reloaded.load_state_dict(back, strict=True)
    original = course.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[key], original[key]) for key in original)
    ours = CustomAutoencoderKL.from_single_file(tmp_path / "back.safetensors")
    assert ours.config.scaling_factor == SCALE and ours.config.norm_num_groups == 32


def test_a_vae_the_course_cannot_hold_is_refused_naming_what_differs(tmp_path, capsys):
    tiny_vae().save_pretrained(tmp_path / "tiny")
    assert main(["convert", str(tmp_path / "tiny"), str(tmp_path / "out.safetensors"), "--to", "course"]) == 2
    error = capsys.readouterr().err
    assert "cannot hold this VAE" in error and "block_out_channels (32, 64)" in error and "norm_num_groups 8" in error
    assert error.count("\n") == 1 and not (tmp_path / "out.safetensors").exists()


def test_course_keys_out_of_layout_are_named(course_file):
    course, _ = course_file
    state_dict = dict(course.state_dict())
    del state_dict["decoder.25.bias"]
    state_dict["encoder.99.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"'encoder\.99\.weight'"):
        conversion.detect_scheme(state_dict)
    del state_dict["encoder.99.weight"]
    with pytest.raises(ValueError, match=r"missing from the course's .*'decoder\.25\.bias'"):
        conversion.detect_scheme(state_dict)


def test_a_group_count_other_than_the_courses_is_refused(tmp_path, capsys):
    """The course's layout is SD 1.x's with 32 groups: --norm-num-groups 16 would write a VAE that computes another
    function with the same weights."""
    from helpers import fails
    from safetensors.torch import save_file

    path = tmp_path / "course.safetensors"  # enough of the course's positional keys to be recognised as its layout
    save_file({"encoder.0.weight": torch.zeros(128, 3, 3, 3), "decoder.0.weight": torch.zeros(4, 4, 1, 1)}, path)
    fails(["convert", str(path), str(tmp_path / "out"), "--to", "diffusers", "--norm-num-groups", "16"], capsys,
          "the course's VAE_Encoder/VAE_Decoder layout fixes norm_num_groups=32", "norm_num_groups=16",
          "leave it out")
    with pytest.raises(ValueError, match="fixes norm_num_groups=32"):
        CustomAutoencoderKL.from_single_file(path, norm_num_groups=16)
    assert not (tmp_path / "out").exists()
