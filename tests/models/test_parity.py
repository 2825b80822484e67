"""Same config + same weights ⇒ the same numbers as diffusers' own AutoencoderKL.

The encoder is bit-identical. The decoder's ×2 upsampling runs as four 2×2 phase convolutions
(see network.Upsample), which rounds differently from diffusers' literal upsample-then-conv; the
decode is held to ≤ 1e-5 of diffusers or, where float32 itself is coarser than that, to being
as close (within 25%) as diffusers' own float32 decode to a float64 decode of the same weights.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from factories import CONFIGS, randomize_norms, stock_autoencoder_kl

from sd_custom_vae import CustomAutoencoderKL, network

TOLERANCE = 1e-5


def max_differences(reference, ours, image, latents):
    with torch.no_grad():
        expected, got = reference.encode(image).latent_dist, ours.encode(image).latent_dist
        decoded_expected, decoded_got = reference.decode(latents).sample, ours.decode(latents).sample
    return {
        "mean": (expected.mean - got.mean).abs().max().item(),
        "std": (expected.std - got.std).abs().max().item(),
        "decode": (decoded_expected - decoded_got).abs().max().item(),
    }


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def inputs_for(config, batch=2, height=64, width=96):
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(batch, 3, height, width, generator=generator).clamp(-1, 1)
    latents = torch.randn(batch, config["latent_channels"], height // factor, width // factor, generator=generator)
    return image, latents


@pytest.fixture(scope="module")
def sd_pair():
    reference = randomize_norms(stock_autoencoder_kl(CONFIGS["sd"]))
    return reference, CustomAutoencoderKL.from_autoencoder_kl(reference).eval()


@pytest.mark.parametrize("name", ["sd", "sdxl", "flux", "tiny"])
def test_matches_diffusers_on_same_weights(name, request):
    config = CONFIGS[name]
    if name == "sd":  # the SD-size pair is built once for this module
        reference, ours = request.getfixturevalue("sd_pair")
    else:
        reference = randomize_norms(stock_autoencoder_kl(config))
        ours = CustomAutoencoderKL.from_autoencoder_kl(reference).eval()
    for key, value in config.items():
        assert as_list(ours.config[key]) == as_list(value), key
    image, latents = inputs_for(config)
    differences = max_differences(reference, ours, image, latents)
    assert differences["mean"] <= TOLERANCE and differences["std"] <= TOLERANCE, differences
    assert_decode_matches(reference, ours, latents)


def assert_decode_matches(reference, ours, latents):
    with torch.no_grad():
        expected, got = reference.decode(latents).sample, ours.decode(latents).sample
        truth = copy.deepcopy(reference).double().decode(latents.double()).sample
    ours_error = (got.double() - truth).abs().max().item()
    diffusers_error = (expected.double() - truth).abs().max().item()
    difference = (got - expected).abs().max().item()
    assert difference <= TOLERANCE or ours_error <= 1.25 * diffusers_error, (difference, ours_error, diffusers_error)
    assert difference <= 2 * max(TOLERANCE, diffusers_error), (difference, diffusers_error)


def test_forward_matches_diffusers(sd_pair):
    """forward samples the same latent as diffusers (the encoder is bit-identical, the draw the same) and decodes it
    as decode does, so it matches diffusers as closely as the decoder does."""
    reference, ours = sd_pair
    image, _ = inputs_for(CONFIGS["sd"], batch=1, height=32, width=48)
    with torch.no_grad():
        z = reference.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(3))
        assert torch.equal(ours.encode(image).latent_dist.sample(generator=torch.Generator().manual_seed(3)), z)
        got = ours(image, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample
        assert torch.equal(got, ours.decode(z).sample)
    assert_decode_matches(reference, ours, z)


def test_round_trip_to_stock_model_is_bit_exact(sd_pair):
    reference, ours = sd_pair
    back = ours.to_autoencoder_kl()
    assert type(back).__name__ == "AutoencoderKL"
    expected = reference.state_dict()
    assert back.state_dict().keys() == expected.keys()
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[key]), key


# The tolerance is tight enough to catch the classic porting mistakes: each is made on purpose
# here and must push the difference far above it.


def test_catches_wrong_group_norm_eps(sd_pair):
    reference, ours = sd_pair
    mutant = copy.deepcopy(ours)
    for module in mutant.modules():
        if isinstance(module, torch.nn.GroupNorm):
            module.eps = 1e-5  # torch's default instead of SD's 1e-6
    assert max(max_differences(reference, mutant, *inputs_for(CONFIGS["sd"])).values()) > 10 * TOLERANCE


def test_catches_transposed_attention_weight(sd_pair):
    reference, ours = sd_pair
    mutant = copy.deepcopy(ours)
    with torch.no_grad():
        for attention in (mutant.encoder.mid_block.attentions[0], mutant.decoder.mid_block.attentions[0]):
            attention.to_q.weight.copy_(attention.to_q.weight.t().clone())
    assert max(max_differences(reference, mutant, *inputs_for(CONFIGS["sd"])).values()) > 10 * TOLERANCE


def test_catches_wrong_downsample_padding(sd_pair, monkeypatch):
    reference, ours = sd_pair
    monkeypatch.setattr(network.Downsample, "forward", lambda self, x: self.conv(F.pad(x, (1, 0, 1, 0))))
    assert max_differences(reference, ours, *inputs_for(CONFIGS["sd"]))["mean"] > 10 * TOLERANCE
