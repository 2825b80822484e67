"""CustomAutoencoderKL is an AutoencoderKL wherever diffusers and name-based tools look (its type, its module tree,
its state-dict keys), while every computation in it is ours."""

import copy
import sys
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from factories import TINY, reconstruct, stock_autoencoder_kl, tiny_vae
from peft import LoraConfig

DIFFUSERS = Path(diffusers.__file__).parent
# diffusers' network code: none of it may run inside our model
NETWORK_FILES = {"models/resnet.py", "models/attention_processor.py", "models/upsampling.py", "models/downsampling.py",
                 "models/unets/unet_2d_blocks.py", "models/normalization.py", "models/activations.py"}


def test_it_is_an_autoencoder_kl_holding_no_diffusers_module(vae):
    assert isinstance(vae, AutoencoderKL)
    foreign = [name for name, module in vae.named_modules() if type(module).__module__.startswith("diffusers")]
    assert foreign == []
    assert type(vae).__module__ == "sd_custom_vae.autoencoder_kl"  # the public path pipelines record


def test_a_decode_runs_no_diffusers_network_code(vae):
    ran = set()

    def record(frame, event, arg):
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(DIFFUSERS):
                ran.add((path.relative_to(DIFFUSERS).as_posix(), frame.f_code.co_name))

    latents = torch.randn(1, 4, 8, 8)
    sys.setprofile(record)
    try:
        with torch.no_grad():
            vae.decode(latents)
            vae.encode(torch.zeros(1, 3, 16, 16))
    finally:
        sys.setprofile(None)
    assert not {(file, name) for file, name in ran if file in NETWORK_FILES or name == "forward"}, ran
    # what does run: the offload hook's wrapper, the output dataclasses, the latent distribution, config and dtype
    infrastructure = {"utils/accelerate_utils.py", "utils/outputs.py", "configuration_utils.py",
                      "models/modeling_utils.py"}
    assert {(f, n) for f, n in ran if f not in infrastructure} == {("models/autoencoders/vae.py", "__init__")}


def test_state_dicts_load_strictly_both_ways_with_the_same_outputs(vae, image):
    stock = stock_autoencoder_kl(TINY)
    stock.load_state_dict(vae.state_dict(), strict=True)
    torch.testing.assert_close(reconstruct(stock, image), reconstruct(vae, image), rtol=0, atol=1e-5)
    other = stock_autoencoder_kl(TINY, seed=5)
    vae.load_state_dict(other.state_dict(), strict=True)
    torch.testing.assert_close(reconstruct(vae, image), reconstruct(other, image), rtol=0, atol=1e-5)


def test_modules_sit_where_code_that_walks_a_vae_looks(vae):
    assert vae.decoder.up_blocks[0].resnets[0].conv1.out_channels == 64
    assert isinstance(vae.decoder.mid_block.attentions[0].to_q, torch.nn.Linear)
    assert vae.encoder.down_blocks[0].downsamplers[0].conv.stride == (2, 2)
    assert vae.decoder.up_blocks[-1].upsamplers is None and vae.encoder.conv_norm_out.num_groups == 8


def test_a_lora_made_for_a_stock_autoencoder_kl_works_on_ours_and_back(vae, image, tmp_path):
    """target_modules and a rank_pattern keyed by diffusers' module paths, an adapter file from a stock model."""
    stock = stock_autoencoder_kl(TINY)
    stock.load_state_dict(vae.state_dict())
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"],
                        rank_pattern={"decoder.mid_block.attentions.0.to_k": 8}, init_lora_weights=False)
    torch.manual_seed(3)
    stock.add_adapter(config)
    stock.save_lora_adapter(tmp_path / "stock")
    expected = reconstruct(stock, image)
    assert (expected - reconstruct(vae, image)).abs().max() > 1e-2  # the adapter does something

    fresh = copy.deepcopy(vae)
    fresh.load_lora_adapter(tmp_path / "stock", prefix=None, adapter_name="from-stock", use_safetensors=True)
    assert fresh.decoder.mid_block.attentions[0].to_k.lora_A["from-stock"].out_features == 8
    torch.testing.assert_close(reconstruct(fresh, image), expected, rtol=0, atol=1e-5)

    fresh.save_lora_adapter(tmp_path / "ours", adapter_name="from-stock")
    back = stock_autoencoder_kl(TINY)
    back.load_state_dict(vae.state_dict())
    back.load_lora_adapter(tmp_path / "ours", prefix=None, use_safetensors=True)
    torch.testing.assert_close(reconstruct(back, image), expected, rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::sd_custom_vae.models.pipeline.LatentScaleWarning")
def test_pipeline_fuses_qkv_projections_of_our_vae(tmp_path):
    from tiny_pipelines import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(tiny_vae(), tmp_path / "tokenizer")
    pipe.set_progress_bar_config(disable=True)

    def generate():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pipe("a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                        output_type="np").images

    before = generate()
    pipe.fuse_qkv_projections()
    assert pipe.vae.decoder.mid_block.attentions[0].fused_projections
    np.testing.assert_allclose(generate(), before, rtol=0, atol=1e-5)
    pipe.unfuse_qkv_projections()
    assert not hasattr(pipe.vae.decoder.mid_block.attentions[0], "to_qkv")
    np.testing.assert_allclose(generate(), before, rtol=0, atol=1e-5)


def test_autoencoder_kl_tiled_methods_are_our_exact_tiling(vae):
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = torch.randn(1, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vae.tiled_encode(image).latent_dist.mean, vae.encode(image).latent_dist.mean,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(vae.tiled_decode(latents).sample, vae.decode(latents).sample, rtol=0, atol=1e-5)
    vae.tile_sample_min_size = 48  # AutoencoderKL's attribute, which users set
    assert vae.tiling.tile_size == 48 and vae.tile_latent_min_size == 24

