"""Key maps between our names (diffusers'), LDM's and sd-custom-vae 0.2's: lossless both ways, and checked against
diffusers' own converter."""

import itertools

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from factories import CONFIGS, TINY, stock_autoencoder_kl, tiny_vae

import conversion
from conversion import convert_state_dict, detect_scheme, expected_shapes
from sd_custom_vae import CustomAutoencoderKL, ScratchVAE
from sd_custom_vae.conversion.schemes import LEGACY, OURS, format_slot, parse_keys

TARGETS = ["diffusers", "ldm"]  # the course's layout holds one architecture only: test_course.py


def assert_identical(a: dict, b: dict, ordered: bool = True):
    assert list(a) == list(b) if ordered else sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module", params=["sd", "tiny"])
def our_state_dict(request):
    torch.manual_seed(0)
    vae = ScratchVAE(**{k: v for k, v in CONFIGS[request.param].items() if k in conversion.ARCHITECTURE_KEYS})
    return vae.state_dict(), vae.config


@pytest.mark.parametrize("source, target", list(itertools.permutations(TARGETS, 2)))
def test_round_trip_is_bit_exact(our_state_dict, source, target):
    state_dict, config = our_state_dict
    original = convert_state_dict(state_dict, source, config)
    assert detect_scheme(original, config["norm_num_groups"]).scheme == source
    there = convert_state_dict(original, target)
    assert detect_scheme(there, config["norm_num_groups"]).scheme == target
    assert_identical(convert_state_dict(there, source), original)


def test_our_models_carry_diffusers_names():
    state_dict = ScratchVAE(**TINY).state_dict()
    assert detect_scheme(state_dict, TINY["norm_num_groups"]).scheme == OURS.name == "diffusers"
    assert_identical(convert_state_dict(state_dict, "diffusers", TINY), state_dict)


def test_files_of_sd_custom_vae_0_2_are_read_in_their_names():
    state_dict = ScratchVAE(**TINY).state_dict()
    slots = parse_keys(state_dict, OURS)[0]
    old = {format_slot(slot, LEGACY, 2): state_dict[key] for key, slot in slots.items()}
    assert "encoder.down.0.res_blocks.0.conv1.weight" in old and "encoder.mid.attn.query.weight" in old
    assert detect_scheme(old, TINY["norm_num_groups"]).scheme == "sd-custom-vae-0.2"
    assert_identical(convert_state_dict(old, "diffusers", TINY), state_dict)
    with pytest.raises(ValueError, match="unknown output format 'sd-custom-vae-0.2'"):
        convert_state_dict(state_dict, "sd-custom-vae-0.2", TINY)


def test_the_old_scratch_target_means_our_names_with_a_warning():
    state_dict = ScratchVAE(**TINY).state_dict()
    with pytest.warns(FutureWarning,
                      match="the output 'scratch' is now 'diffusers'; the old name stops working in sd-custom-vae 0.5"):
        assert_identical(convert_state_dict(state_dict, "scratch", TINY), state_dict)


def test_walker_knows_the_network():
    """expected_shapes (conversion's own map of the architecture) agrees with the real modules."""
    for name, config in CONFIGS.items():
        architecture = {k: v for k, v in config.items() if k in conversion.ARCHITECTURE_KEYS}
        model = ScratchVAE(**architecture)
        levels = len(config["block_out_channels"])
        walked = {format_slot(s, OURS, levels): shape for s, shape in expected_shapes(model.config).items()}
        assert walked == {k: tuple(v.shape) for k, v in model.state_dict().items()}, name


def test_our_names_are_stock_autoencoder_kl_names():
    stock = stock_autoencoder_kl(TINY)
    ours = CustomAutoencoderKL.from_autoencoder_kl(stock)
    assert_identical(ours.state_dict(), stock.state_dict(), ordered=False)


def test_ldm_output_agrees_with_diffusers_own_converter():
    stock = stock_autoencoder_kl(CONFIGS["sd"])
    ldm = convert_state_dict(stock.state_dict(), "ldm")
    assert "decoder.up.3.block.0.norm1.weight" in ldm  # LDM counts decoder levels from the top
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)  # attention as 1×1 convs
    assert "encoder.down.1.block.0.nin_shortcut.weight" in ldm
    theirs = convert_ldm_vae_checkpoint({f"first_stage_model.{k}": v for k, v in ldm.items()}, dict(stock.config))
    expected = stock.state_dict()
    assert theirs.keys() == expected.keys()
    for key in expected:
        assert torch.equal(theirs[key], expected[key]), key


def test_pre_0_14_diffusers_attention_names_are_accepted():
    state_dict = ScratchVAE(**TINY).state_dict()
    legacy = {
        k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn"): v
        for k, v in state_dict.items()
    }
    assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
    detection = detect_scheme(legacy, TINY["norm_num_groups"])
    assert detection.scheme == "diffusers"
    assert_identical(convert_state_dict(legacy, "diffusers", TINY), state_dict)


def test_detects_vae_inside_a_whole_sd_checkpoint_and_infers_architecture():
    torch.manual_seed(0)
    config = {k: v for k, v in CONFIGS["sd"].items() if k in conversion.ARCHITECTURE_KEYS}
    ldm = convert_state_dict(ScratchVAE(**config).state_dict(), "ldm")
    whole = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    whole["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(320, 4, 3, 3)
    whole["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 768)
    detection = detect_scheme(whole)
    assert detection.scheme == "ldm" and detection.prefix == "first_stage_model."
    assert len(detection.ignored) == 2
    assert detection.config == dict(
        config, in_channels=3, out_channels=3, norm_num_groups=32,
        mid_block_add_attention=True, use_quant_conv=True, use_post_quant_conv=True,
    )


def test_detects_vae_prefix_and_flux_like_architecture():
    config = {k: v for k, v in CONFIGS["flux"].items() if k in conversion.ARCHITECTURE_KEYS}
    diffusers_names = convert_state_dict(ScratchVAE(**config).state_dict(), "diffusers")
    detection = detect_scheme({f"vae.{k}": v for k, v in diffusers_names.items()})
    assert detection.scheme == "diffusers" and detection.prefix == "vae."
    assert detection.config["latent_channels"] == 16
    assert not detection.config["use_quant_conv"] and not detection.config["use_post_quant_conv"]


def test_group_count_that_weights_cannot_tell_must_be_given():
    odd = dict(TINY, block_out_channels=(24, 48))
    state_dict = ScratchVAE(**odd).state_dict()
    with pytest.raises(ValueError, match="pass norm_num_groups"):
        detect_scheme(state_dict)
    assert detect_scheme(state_dict, norm_num_groups=8).config["block_out_channels"] == (24, 48)


# -- the oracle: files we write, loaded by stock diffusers ----------------------------------------


def test_ldm_file_loads_in_stock_diffusers_from_single_file(tmp_path):
    ours = tiny_vae()
    config_folder = tmp_path / "config"
    conversion.write_json(conversion.to_diffusers_config(dict(ours.config)), config_folder / "config.json")
    checkpoint = conversion.as_checkpoint(ours.state_dict(), dict(ours.config))
    conversion.save_checkpoint(checkpoint, tmp_path / "vae.safetensors", "ldm")
    stock = AutoencoderKL.from_single_file(str(tmp_path / "vae.safetensors"), config=str(config_folder))
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(stock.encode(image).latent_dist.mean, ours.encode(image).latent_dist.mean,
                                   rtol=0, atol=1e-5)
        torch.testing.assert_close(stock(image).sample, ours(image).sample, rtol=0, atol=1e-5)


def test_diffusers_folder_loads_in_stock_from_pretrained(tmp_path):
    ours = tiny_vae()
    ours.register_to_config(scaling_factor=0.25)
    checkpoint = conversion.as_checkpoint(ours.state_dict(), dict(ours.config))
    conversion.save_checkpoint(checkpoint, tmp_path / "vae", "diffusers")
    stock = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert stock.config.scaling_factor == 0.25
    image = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(stock(image).sample, ours(image).sample, rtol=0, atol=1e-5)
