"""fp16-fix: a VAE whose float16 decode overflows comes back exact in float32, finite and close in float16,
and loadable by stock diffusers."""

import copy

import pytest
import torch
from diffusers import AutoencoderKL
from factories import tiny_vae

from sd_custom_vae.cli import main
from sd_custom_vae.models.fp16_rescale import FP16_MAX, HEADROOM, calibration_latents
from sd_custom_vae.models.half_precision import emulated_float16

BLOW_UP = 2.0**14


def overflowing_vae():
    """A tiny VAE with its decoder's first residual stream scaled up by 2^14: the same function in float32 (the
    fp16-fix transform in reverse), activations far beyond float16's range."""
    vae = tiny_vae(block_out_channels=(32, 64), scaling_factor=0.5)
    decoder = vae.decoder
    with torch.no_grad():
        mid = decoder.mid_block
        for module in (decoder.conv_in, mid.resnets[0].conv2, mid.attentions[0].to_out[0], mid.resnets[1].conv2,
                       *(block.conv2 for block in decoder.up_blocks[0].resnets)):
            module.weight.mul_(BLOW_UP)
            module.bias.mul_(BLOW_UP)
        decoder.up_blocks[0].upsamplers[0].conv.weight.div_(BLOW_UP)  # the next level reads the stream at its old scale
    return vae


def decode(model, latents, dtype):
    """`model` run in `dtype`, on a copy: casting it there and back would round its float32 weights."""
    model = copy.deepcopy(model).to(dtype)
    with torch.no_grad():
        return model.decode(latents.to(dtype)).sample.float()


def test_fp16_fix_makes_an_overflowing_vae_exact_in_half_precision(tmp_path, capsys):
    original = tiny_vae(block_out_channels=(32, 64), scaling_factor=0.5)
    broken = overflowing_vae()
    latents = calibration_latents(broken, count=2, side=8, seed=3)
    expected = decode(original, latents, torch.float32)
    assert (decode(broken, latents, torch.float32) - expected).abs().max() < 1e-3  # same function ...
    assert not torch.isfinite(decode(broken, latents, torch.float16)).all()  # ... that float16 cannot run

    broken.save_pretrained(tmp_path / "broken")
    assert main(["fp16-fix", str(tmp_path / "broken"), str(tmp_path / "fixed"), "--resolution", "64", "--images", "4",
                 "--ldm", str(tmp_path / "fixed.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "NaN/overflow →" in out and "wrote" in out

    stock = AutoencoderKL.from_pretrained(tmp_path / "fixed")  # plain diffusers, nothing of ours
    assert stock.config.force_upcast is False
    fixed32 = decode(stock, latents, torch.float32)
    fixed16 = decode(stock, latents, torch.float16)
    assert (fixed32 - expected).abs().max() <= 1e-3
    assert torch.isfinite(fixed16).all()
    assert (fixed16 - fixed32).abs().max() <= 3e-2
    assert (tmp_path / "fixed.safetensors").is_file()


def test_make_fp16_safe_keeps_every_activation_under_the_headroom():
    vae = overflowing_vae()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = vae.make_fp16_safe(images, calibration_latents(vae, count=2, side=8))
    assert report.max_activation_before > FP16_MAX
    assert report.max_activation_after <= FP16_MAX / HEADROOM * 2  # a power of two under the target, at most
    assert report.fp32_change <= 1e-3 and report.fp16_error_after <= 3e-2
    assert vae.config.force_upcast is False
    with pytest.raises(ValueError, match="float32"):
        vae.half().make_fp16_safe(images)


def test_emulated_float16_computes_what_float16_computes_nan_for_nan():
    """The CPU check's float16 (float32 kernels, every layer's inputs and outputs rounded to float16) against real
    float16, on a VAE that fits float16 and on one that overflows it."""
    for vae, finite in ((tiny_vae(block_out_channels=(32, 64), scaling_factor=0.5), True), (overflowing_vae(), False)):
        latents = calibration_latents(vae, count=2, side=8, seed=1)
        images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
        emulated = emulated_float16(vae)
        real = copy.deepcopy(vae).to(torch.float16)
        with torch.no_grad():
            pairs = [(emulated.decode(latents).sample, real.decode(latents.half()).sample.float()),
                     (emulated.encode(images).latent_dist.mean, real.encode(images.half()).latent_dist.mean.float())]
        for ours, theirs in pairs:
            assert bool(torch.isfinite(ours).all()) == bool(torch.isfinite(theirs).all())  # NaN where float16 has NaN
            if torch.isfinite(theirs).all():
                torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-2)
        assert bool(torch.isfinite(pairs[0][1]).all()) == finite  # the blown-up decoder overflows, the other does not


def unevenly_overflowing_vae():
    """A tiny VAE whose decoder stream overflows float16 in its first 4 channels (×2^15) while the other groups
    keep small variances (×2^4): a scale small enough to fix the overflow brings those close to GroupNorm's
    epsilon, where a loose margin changes the float32 function (1e-4 with the earlier margin of 10^4)."""
    vae = tiny_vae(block_out_channels=(32, 64), scaling_factor=0.5)
    decoder = vae.decoder
    mid = decoder.mid_block
    with torch.no_grad():
        for module in (decoder.conv_in, mid.resnets[0].conv2, mid.attentions[0].to_out[0], mid.resnets[1].conv2,
                       *(block.conv2 for block in decoder.up_blocks[0].resnets)):
            for parameter in (module.weight, module.bias):
                parameter.mul_(2.0**4)
                parameter[:4] *= 2.0**11
    return vae


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_make_fp16_safe_keeps_the_float32_function_where_epsilon_is_close():
    vae = unevenly_overflowing_vae()
    original = copy.deepcopy(vae)
    latents = calibration_latents(vae, count=2, side=8, seed=3)
    assert not torch.isfinite(decode(vae, latents, torch.float16)).all()  # float16 overflows before the fix
    images = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    report = vae.make_fp16_safe(images, calibration_latents(vae, count=2, side=8))
    assert report.fp16_safe and vae.config.force_upcast is False
    expected = decode(original, latents, torch.float32)
    assert relative(decode(vae, latents, torch.float32), expected) <= 1e-5  # the float32 function is unchanged ...
    with torch.no_grad():  # ... in the round trip too, where the earlier margin changed it by 1.2e-4
        assert relative(vae(images).sample, original(images).sample) <= 1e-5
    half = decode(vae, latents, torch.float16)
    assert torch.isfinite(half).all() and (half - expected).abs().max() <= 3e-2


def overflowing_latents_vae():
    """A tiny VAE whose encoder hands out latents beyond float16's range (quant_conv ×2^17, post_quant_conv
    ÷2^17: the same function in float32). No rescale of the streams reaches the latents."""
    vae = tiny_vae(block_out_channels=(32, 64), scaling_factor=0.5)
    with torch.no_grad():
        vae.quant_conv.weight.mul_(2.0**17)
        vae.quant_conv.bias.mul_(2.0**17)
        vae.post_quant_conv.weight.div_(2.0**17)
    return vae


def test_make_fp16_safe_says_so_when_float16_cannot_be_made_safe():
    """NaN in float16 is never reported as a small error, nor written as force_upcast false."""
    vae = overflowing_latents_vae()
    vae.register_to_config(force_upcast=False)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.warns(UserWarning, match=r"float16 cannot be made safe.*quant_conv.*force_upcast is set true"):
        report = vae.make_fp16_safe(images, calibration_latents(vae, count=2, side=8))
    assert report.fp16_error_after == float("inf") and not report.fp16_safe
    assert "quant_conv" in report.overflow and "force_upcast stays true" in str(report)
    assert vae.config.force_upcast is True
    assert report.max_activation_after > FP16_MAX  # the latents' size, which no scale changed


def test_fp16_fix_writes_force_upcast_true_and_warns_when_float16_cannot_be_made_safe(tmp_path, capsys):
    broken = overflowing_latents_vae()
    broken.register_to_config(force_upcast=False)
    broken.save_pretrained(tmp_path / "broken")
    with pytest.warns(UserWarning, match=r"float16 cannot be made safe.*quant_conv") as warned:
        assert main(["fp16-fix", str(tmp_path / "broken"), str(tmp_path / "fixed"), "--resolution", "16",
                     "--images", "1"]) == 0
    assert sum("float16 cannot" in str(w.message) for w in warned) == 1  # the CLI prints it as one line
    out = capsys.readouterr().out
    assert "NaN/overflow → NaN/overflow" in out and "float16 still overflows (first in quant_conv)" in out
    assert AutoencoderKL.from_pretrained(tmp_path / "fixed").config.force_upcast is True
