"""Tiled encode/decode equal the untiled ones: GroupNorm statistics span the whole image."""

import math

import pytest
import torch
from factories import TINY, stock_autoencoder_kl, tiny_vae

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.models import tiling

THREE_LEVELS = dict(TINY, block_out_channels=(16, 32, 32), layers_per_block=2)


@pytest.fixture
def vae():
    return tiny_vae(**THREE_LEVELS)


@pytest.mark.parametrize("max_memory", [1 << 20, 3 << 20, 1 << 30])  # spill everything … keep everything
def test_tiled_equals_untiled(vae, max_memory, tmp_path):
    image = torch.rand(2, 3, 72, 104, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = torch.randn(2, 4, 18, 26, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected_moments = vae.encode(image).latent_dist.parameters
        expected_image = vae.decode(latents).sample
        vae.enable_tiling(tile_size=32, max_memory=max_memory, spill_dir=tmp_path)
        assert vae.use_tiling
        moments = vae.encode(image).latent_dist.parameters
        decoded = vae.decode(latents).sample
    assert (moments - expected_moments).abs().max().item() <= 1e-4
    assert (decoded - expected_image).abs().max().item() <= 1e-4
    assert list(tmp_path.iterdir()) == []  # spilled activations are gone with the call
    vae.disable_tiling()
    assert not vae.use_tiling


def test_tiling_only_kicks_in_above_tile_size(vae, monkeypatch):
    import sd_custom_vae.models.tiling as tiling

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


def test_activations_beyond_the_budget_go_to_disk_and_tiles_fit_it(vae, monkeypatch, tmp_path):
    made = []
    real = tiling.Store.__init__

    def record(self, shape, dtype, groups, in_memory, spill_dir):
        made.append((shape, in_memory))
        real(self, shape, dtype, groups, in_memory, spill_dir)

    monkeypatch.setattr(tiling.Store, "__init__", record)
    latents = torch.randn(2, 4, 40, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = vae.decode(latents).sample
        vae.enable_tiling(tile_size=32, max_memory=3 << 20, spill_dir=tmp_path)
        decoded = vae.decode(latents).sample
    assert (decoded - expected).abs().max().item() <= 1e-4
    kept = [shape for shape, in_memory in made if in_memory]
    spilled = [shape for shape, in_memory in made if not in_memory]
    assert spilled and kept  # the large full-resolution activations went to disk, the small ones stayed
    assert max(math.prod(shape) for shape in spilled) > max(math.prod(shape) for shape in kept)


def test_every_step_opens_with_at_most_one_group_norm(vae):
    from sd_custom_vae.network import ResidualBlock

    for network in (vae.encoder, vae.decoder):
        steps = [step for block in network.blocks() for step in block.tile_steps()]
        assert sum(step.whole for step in steps) == 1  # the mid block, with its attention
        halves = [step for step in steps if step.keeps_input]
        assert len(halves) == sum(isinstance(m, ResidualBlock) for m in network.modules()) - 2  # mid's two run whole
