"""Everything diffusers and its users do to a VAE besides calling it: hooks (offload, casting, tracing),
the stock config, gradient checkpointing, attention processors, PEFT adapters and the loaders' keywords.

The reference is always the same model run plainly (or diffusers' own ``AutoencoderKL``): each way of
touching the model must give the images it gives, within the rounding of any storage dtype involved.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, FusedAttnProcessor2_0
from factories import TINY, reconstruct, stock_autoencoder_kl
from safetensors.torch import load_file, save_file

import conversion
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.network import AttentionBlockProcessor, NearestUpsampleConv2d

LAYERS = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.GroupNorm)


# -- hooks: every parameter is used by calling its own module ---------------------------------------


def test_forward_hooks_fire_on_every_layer(vae, image):
    called = set()
    for name, module in vae.named_modules():
        if isinstance(module, LAYERS):
            module.register_forward_hook(lambda *_, name=name: called.add(name))
    reconstruct(vae, image)
    layers = {name for name, module in vae.named_modules() if isinstance(module, LAYERS)}
    assert layers - called == set()
    assert "decoder.up_blocks.0.upsamplers.0.conv" in called


def _group_offload(kind, disk):
    def apply(model, tmp_path):
        extra = {"num_blocks_per_group": 1} if kind == "block_level" else {}
        if disk:
            extra["offload_to_disk_path"] = str(tmp_path)
        model.enable_group_offload(onload_device=torch.device("cpu"), offload_type=kind, **extra)

    return apply


def _sequential_offload(model, tmp_path):
    from accelerate import cpu_offload

    cpu_offload(model, execution_device="cpu")  # what pipe.enable_sequential_cpu_offload() does to each model


OFFLOADS = {
    "sequential-cpu-offload": _sequential_offload,
    "group-leaf": _group_offload("leaf_level", False),
    "group-leaf-disk": _group_offload("leaf_level", True),
    "group-block": _group_offload("block_level", False),
    "group-block-disk": _group_offload("block_level", True),
}


@pytest.mark.parametrize("offload", list(OFFLOADS))
def test_offloading_gives_the_same_images(vae, image, offload, tmp_path):
    expected = reconstruct(vae, image)
    OFFLOADS[offload](vae, tmp_path)
    got = reconstruct(vae, image)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("storage_dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_layerwise_casting_equals_weights_rounded_to_the_storage_dtype(vae, image, storage_dtype):
    # Layerwise casting stores convs and linears in storage_dtype and computes in float32: the same as a
    # float32 model whose weights were rounded to storage_dtype (norms are skipped by diffusers' patterns).
    rounded = copy.deepcopy(vae)
    for name, module in rounded.named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and "norm" not in name:
            for parameter in module.parameters():
                parameter.data = parameter.data.to(storage_dtype).float()
    vae.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    assert vae.decoder.up_blocks[0].upsamplers[0].conv.weight.dtype == storage_dtype
    torch.testing.assert_close(reconstruct(vae, image), reconstruct(rounded, image), rtol=0, atol=1e-5)


def test_pipeline_level_offloading_gives_the_same_images(vae, tmp_path):
    from tiny_pipelines import tiny_sd_pipeline

    def generate(pipe):
        pipe.set_progress_bar_config(disable=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = pipe("a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
        return out.images

    expected = generate(tiny_sd_pipeline(copy.deepcopy(vae), tmp_path / "tok"))
    pipe = tiny_sd_pipeline(copy.deepcopy(vae), tmp_path / "tok")
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(generate(pipe), expected, rtol=0, atol=1e-5)
    # pipe.enable_sequential_cpu_offload() applies this to every component; this transformers' CLIP
    # does not survive it on a CPU, so the VAE alone is offloaded here
    pipe = tiny_sd_pipeline(copy.deepcopy(vae), tmp_path / "tok")
    _sequential_offload(pipe.vae, tmp_path)
    np.testing.assert_allclose(generate(pipe), expected, rtol=0, atol=1e-5)


class _Decode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents).sample


class _Encode(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, images):
        return self.vae.encode(images).latent_dist.mean


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("graph", ["encode", "decode"])
def test_onnx_export_runs_in_onnxruntime_and_matches(vae, graph, dynamo, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    module, shape = (_Encode(vae), (1, 3, 32, 32)) if graph == "encode" else (_Decode(vae), (1, 4, 16, 16))
    path = tmp_path / f"{graph}.onnx"
    export = dict(input_names=["x"], output_names=["y"])
    torch.onnx.export(module, (torch.randn(shape),), str(path), dynamo=dynamo, **export)
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["x"]  # a graph that ignores its input has none
    outputs = []
    for seed in (1, 2):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        got = session.run(None, {"x": x.numpy()})[0]
        expected = reconstruct_graph(module, x)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        outputs.append(got)
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-2


def reconstruct_graph(module, x):
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_upsample_conv_traced_form_equals_eager_form(memory_format):
    conv = NearestUpsampleConv2d(8)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=memory_format)
    with torch.no_grad():
        eager = conv(x)
        traced = torch.jit.trace(conv, x)(x)  # the pixel_shuffle form, what exporters record
    literal = F.conv2d(F.interpolate(x, scale_factor=2.0), conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(eager, literal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traced, eager, rtol=0, atol=1e-6)


# -- the stock config ------------------------------------------------------------------------------


def test_the_whole_stock_config_is_accepted(image):
    stock = stock_autoencoder_kl(TINY)
    ours = CustomAutoencoderKL(**stock.config)
    ours.load_state_dict(conversion.convert_state_dict(stock.state_dict(), "diffusers", dict(ours.config)))
    with torch.no_grad():
        torch.testing.assert_close(ours(image).sample, stock(image).sample, rtol=0, atol=1e-5)
    assert ours.config.down_block_types == ["DownEncoderBlock2D"] * 2
    assert CustomAutoencoderKL.from_config(stock.config).config.act_fn == "silu"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"]),
         r"down_block_types.*AttnDownEncoderBlock2D.*'DownEncoderBlock2D'"),
        (dict(up_block_types=["UpDecoderBlock2D"]), r"up_block_types lists 1 level\(s\) but block_out_channels has 2"),
        (dict(act_fn="gelu"), r"act_fn is 'gelu'; the supported value is 'silu'"),
        (dict(scaling_factor="banana"), r"scaling_factor must be a positive finite number, got 'banana'"),
        (dict(sample_size=-8), r"sample_size must be a positive integer"),
        (dict(latents_mean=[0.0, 1.0]), r"latents_mean must be null or a list of 4 finite numbers"),
    ],
)
def test_values_our_network_does_not_implement_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        CustomAutoencoderKL(**{**TINY, **overrides})


# -- gradient checkpointing --------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_gradients(vae, image):
    def gradients(model):
        model.zero_grad()
        model.train()
        loss = model(image, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample.square().mean()
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = gradients(vae)
    vae.enable_gradient_checkpointing()
    assert {type(m).__name__ for m in vae.modules() if getattr(m, "gradient_checkpointing", False)} == {
        "Encoder", "Decoder", "UNetMidBlock2D"
    }
    calls = []
    for owner in (vae.encoder, vae.decoder, vae.encoder.mid_block):
        inner = owner._gradient_checkpointing_func
        owner._gradient_checkpointing_func = lambda *a, inner=inner: calls.append(1) or inner(*a)
    checkpointed = gradients(vae)
    assert calls, "no stage ran through checkpointing"
    torch.testing.assert_close(checkpointed[0], plain[0])
    for name, grad in plain[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    vae.disable_gradient_checkpointing()
    assert not vae.is_gradient_checkpointing


# -- attention processors ------------------------------------------------------------------------------


def test_attention_processors_keyed_by_module_path_and_interchangeable(vae, image):
    expected = reconstruct(vae, image)
    assert set(vae.attn_processors) == {"encoder.mid_block.attentions.0.processor",
                                        "decoder.mid_block.attentions.0.processor"}
    assert all(isinstance(p, AttentionBlockProcessor) for p in vae.attn_processors.values())
    for processor in (AttnProcessor(), AttnProcessor2_0()):
        vae.set_attn_processor(processor)
        torch.testing.assert_close(reconstruct(vae, image), expected, rtol=0, atol=1e-5)
    vae.set_attn_processor({"encoder.mid_block.attentions.0.processor": AttnProcessor(),
                            "decoder.mid_block.attentions.0.processor": AttnProcessor2_0()})
    assert type(vae.decoder.mid_block.attentions[0].processor) is AttnProcessor2_0
    with pytest.raises(ValueError, match="number of processors"):
        vae.set_attn_processor({"encoder.mid_block.attentions.0.processor": AttnProcessor()})
    vae.set_default_attn_processor()
    assert all(isinstance(p, AttentionBlockProcessor) for p in vae.attn_processors.values())


def test_qkv_fusion_leaves_outputs_unchanged(vae, image):
    expected = reconstruct(vae, image)
    vae.fuse_qkv_projections()
    attention = vae.encoder.mid_block.attentions[0]
    assert attention.fused_projections and hasattr(attention, "to_qkv")
    torch.testing.assert_close(reconstruct(vae, image), expected, rtol=0, atol=1e-5)
    vae.set_attn_processor(FusedAttnProcessor2_0())
    torch.testing.assert_close(reconstruct(vae, image), expected, rtol=0, atol=1e-5)
    vae.unfuse_qkv_projections()
    vae.set_default_attn_processor()
    assert not hasattr(vae.encoder.mid_block.attentions[0], "to_qkv")
    torch.testing.assert_close(reconstruct(vae, image), expected, rtol=0, atol=0)


# -- PEFT adapters -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets", [["to_q", "to_k", "to_v", "to_out.0"], ["conv1", "conv2", "conv_shortcut"], ["conv"]],
    ids=["attention", "resnets", "resamplers"],
)
def test_lora_round_trip_fuse_and_disable(vae, image, targets, tmp_path):
    from peft import LoraConfig

    base = reconstruct(vae, image)
    fresh = copy.deepcopy(vae)
    vae.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    with_lora = reconstruct(vae, image)
    assert (with_lora - base).abs().max() > 1e-2
    vae.save_lora_adapter(tmp_path)
    fresh.load_lora_adapter(tmp_path, prefix=None, use_safetensors=True, adapter_name="loaded")
    torch.testing.assert_close(reconstruct(fresh, image), with_lora, rtol=0, atol=1e-6)
    fresh.set_adapters(["loaded"], weights=[0.0])
    torch.testing.assert_close(reconstruct(fresh, image), base, rtol=0, atol=1e-6)
    fresh.set_adapters(["loaded"], weights=[1.0])
    fresh.disable_adapters()
    torch.testing.assert_close(reconstruct(fresh, image), base, rtol=0, atol=1e-6)
    fresh.enable_adapters()
    fresh.fuse_lora()  # merged into the base weights: what unfused LoRA computed, without the adapter layers
    torch.testing.assert_close(reconstruct(fresh, image), with_lora, rtol=0, atol=1e-5)
    fresh.unfuse_lora()
    torch.testing.assert_close(reconstruct(fresh, image), with_lora, rtol=0, atol=1e-5)


# -- loaders -------------------------------------------------------------------------------------------


@pytest.fixture
def stock_folder(tmp_path):
    stock = stock_autoencoder_kl(TINY)
    stock.save_pretrained(tmp_path / "pipe" / "vae")
    stock.save_pretrained(tmp_path / "variant", variant="fp16")
    stock.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    return tmp_path, stock


def test_from_pretrained_takes_diffusers_keywords_on_stock_folders(stock_folder, image):
    root, stock = stock_folder
    expected = reconstruct(stock, image)
    model, info = CustomAutoencoderKL.from_pretrained(root / "pipe" / "vae", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    loads = {
        "subfolder": CustomAutoencoderKL.from_pretrained(root / "pipe", subfolder="vae"),
        "variant": CustomAutoencoderKL.from_pretrained(root / "variant", variant="fp16"),
        "sharded": CustomAutoencoderKL.from_pretrained(root / "sharded"),
        "device_map": CustomAutoencoderKL.from_pretrained(root / "pipe" / "vae", device_map="cpu"),
        "low_cpu_mem_usage": CustomAutoencoderKL.from_pretrained(root / "pipe" / "vae", low_cpu_mem_usage=False),
    }
    for name, loaded in {"output_loading_info": model, **loads}.items():
        assert isinstance(loaded, CustomAutoencoderKL), name
        torch.testing.assert_close(reconstruct(loaded, image), expected, rtol=0, atol=1e-5, msg=name)
    half = CustomAutoencoderKL.from_pretrained(root / "pipe" / "vae", torch_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_from_pretrained_refuses_incomplete_and_foreign_folders(stock_folder, tmp_path):
    root, _ = stock_folder
    weights = load_file(root / "pipe" / "vae" / "diffusion_pytorch_model.safetensors")
    del weights["decoder.conv_out.bias"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((root / "pipe" / "vae" / "config.json").read_text())
    save_file(weights, broken / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ValueError, match=r"1 weight\(s\) missing.*decoder\.conv_out\.bias"):
        CustomAutoencoderKL.from_pretrained(broken)
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text('{"_class_name": "UNet2DConditionModel", "in_channels": 4}')
    with pytest.raises(ValueError, match="holds a UNet2DConditionModel, not a VAE"):
        CustomAutoencoderKL.from_pretrained(unet)


def test_from_single_file_takes_diffusers_signature(stock_folder, image, tmp_path):
    root, stock = stock_folder
    expected = reconstruct(stock, image)
    ldm = conversion.convert_state_dict(stock.state_dict(), "ldm", conversion.from_diffusers_config(dict(stock.config)))
    save_file(ldm, tmp_path / "vae.safetensors")
    for source in (tmp_path / "vae.safetensors", ldm):
        model = CustomAutoencoderKL.from_single_file(source, config=str(root / "pipe"), subfolder="vae",
                                                     torch_dtype=torch.float32)
        torch.testing.assert_close(reconstruct(model, image), expected, rtol=0, atol=1e-5)
        assert model.config.norm_num_groups == TINY["norm_num_groups"]  # read from the config, not assumed
    half = CustomAutoencoderKL.from_single_file(ldm, config=dict(stock.config), torch_dtype=torch.float16)
    assert half.dtype == torch.float16


def test_stock_autoencoder_kl_loads_our_saved_config(vae, tmp_path):
    vae.save_pretrained(tmp_path)
    config = AutoencoderKL.load_config(tmp_path)
    assert config["down_block_types"] == ["DownEncoderBlock2D"] * 2 and config["act_fn"] == "silu"
