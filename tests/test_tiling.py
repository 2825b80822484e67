"""Tiled encode/decode equal the untiled ones: GroupNorm statistics span the whole image."""

import pytest
import torch
from factories import TINY, stock_autoencoder_kl, tiny_vae

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.tiling import network_stages, plan_segments

THREE_LEVELS = dict(TINY, block_out_channels=(16, 32, 32), layers_per_block=2)


@pytest.fixture
def vae():
    return tiny_vae(**THREE_LEVELS)


@pytest.mark.parametrize("max_buffer_bytes", [1, 200_000, 1 << 30])  # recompute everything … keep everything
def test_tiled_equals_untiled(vae, max_buffer_bytes):
    image = torch.rand(2, 3, 72, 104, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = torch.randn(2, 4, 18, 26, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_moments = vae.encode(image).latent_dist.parameters
        expected_image = vae.decode(latents).sample
        vae.enable_tiling(tile_size=32, max_buffer_bytes=max_buffer_bytes)
        assert vae.use_tiling
        moments = vae.encode(image).latent_dist.parameters
        decoded = vae.decode(latents).sample
    assert (moments - expected_moments).abs().max().item() <= 1e-4
    assert (decoded - expected_image).abs().max().item() <= 1e-4
    vae.disable_tiling()
    assert not vae.use_tiling


def test_tiling_only_kicks_in_above_tile_size(vae, monkeypatch):
    import sd_custom_vae.tiling as tiling

    calls = []
    monkeypatch.setattr(tiling, "tiled_decode", lambda *args: calls.append(args) or torch.zeros(1))
    vae.enable_tiling(tile_size=64)
    with torch.no_grad():
        vae.decode(torch.randn(1, 4, 16, 16))  # 64×64 image: one tile, untiled path
        assert calls == []
        vae.decode(torch.randn(1, 4, 16, 20))
    assert len(calls) == 1


def test_diffusers_tiling_differs_where_ours_does_not():
    """The reason this module exists: per-tile GroupNorm statistics change the picture."""
    stock = stock_autoencoder_kl(dict(THREE_LEVELS, sample_size=32))
    ours = CustomAutoencoderKL.from_autoencoder_kl(stock)
    latents = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        untiled = stock.decode(latents).sample
        stock.enable_tiling()
        ours.enable_tiling(tile_size=32)
        theirs_error = (stock.decode(latents).sample - untiled).abs().max().item()
        ours_error = (ours.decode(latents).sample - untiled).abs().max().item()
    assert ours_error <= 1e-4 < theirs_error


def test_plan_keeps_small_activations_and_recomputes_large_ones(vae):
    stages = network_stages(vae.decoder)
    everything = plan_segments(stages, (1, 4, 64, 64), 4, 1 << 40)
    assert all(len(segment) == 1 for segment in everything)
    nothing = plan_segments(stages, (1, 4, 64, 64), 4, 1)
    # conv_in, then the mid block (attention sees every position: always whole), then one long segment
    assert [len(s) for s in nothing] == [1, 1, len(stages) - 2]
    assert nothing[1][0].is_global
