"""Our VAE as ``vae=`` in real diffusers pipelines, tiny and offline: every pipeline class, parity with
``AutoencoderKL``, reduced precision, save/load of a whole pipeline, bad input, the generate command."""

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForText2Image,
    DDPMPipeline,
    DDPMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from factories import TINY, randomize_norms, stock_autoencoder_kl, tiny_vae
from packaging.version import Version
from PIL import Image
from tiny_pipelines import UNET_SAMPLE_SIZE, tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_unet

from conversion import as_checkpoint, save_checkpoint
from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.cli import main
from sd_custom_vae.evaluation.calibrate import Calibration, apply_calibration
from sd_custom_vae.models import tiling
from sd_custom_vae.models.latent_space import CALIBRATION_KEY, is_calibrated
from sd_custom_vae.models.pipeline import LatentScaleWarning, check_compatibility, inject_vae, load_pipeline

PROMPT = "a photo of a dog"
SIZE = 2 * UNET_SAMPLE_SIZE  # the tiny VAE halves the resolution
SDXL_SCALE = 0.13025
EXAMPLES = Path(__file__).parents[2] / "examples"
# The parity tests run a VAE at SD's default scale, which by our rule was never calibrated for it.
uncalibrated_ok = pytest.mark.filterwarnings("ignore::sd_custom_vae.models.pipeline.LatentScaleWarning")


def generate(pipe, **call_kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np", **call_kwargs).images


def stock_vae(**config) -> AutoencoderKL:
    return randomize_norms(stock_autoencoder_kl({**TINY, **config}))


def calibrated(vae: CustomAutoencoderKL) -> CustomAutoencoderKL:
    """Mark `vae` calibrated at its current scale, as `calibrate` would after measuring it."""
    scale = vae.config.scaling_factor
    apply_calibration(vae, Calibration(scale, None, 0.0, 1 / scale, crops=1, resolution=SIZE, data="test", seed=0))
    return vae


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny pipelines, each with a stock AutoencoderKL as the VAE it "shipped with"."""
    root = tmp_path_factory.mktemp("pipelines")
    tokenizer = root / "tokenizer-files"
    builders = {
        "sd": lambda: tiny_sd_pipeline(stock_vae(), tokenizer),
        "inpaint": lambda: tiny_sd_pipeline(stock_vae(), tokenizer, inpainting=True),
        "sdxl": lambda: tiny_sdxl_pipeline(stock_vae(scaling_factor=SDXL_SCALE), tokenizer),
    }
    for name, build in builders.items():
        build().save_pretrained(root / name)
    return {name: root / name for name in builders}


@pytest.fixture(scope="module")
def inputs() -> dict:
    """The images img2img and inpainting start from, beside the prompt."""
    rng = np.random.default_rng(0)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    photo = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return {"image": photo, "mask_image": Image.fromarray(mask)}


def ours_from(folder: Path) -> CustomAutoencoderKL:
    """Our class holding exactly the weights and config of the pipeline's own VAE."""
    return CustomAutoencoderKL.from_autoencoder_kl(AutoencoderKL.from_pretrained(folder / "vae"))


# case: class given to load_pipeline, saved pipeline, the class it resolves to, inputs beside the prompt
CASES = {
    "sd": (StableDiffusionPipeline, "sd", StableDiffusionPipeline, ()),
    "img2img": (StableDiffusionImg2ImgPipeline, "sd", StableDiffusionImg2ImgPipeline, ("image",)),
    "inpaint": (StableDiffusionInpaintPipeline, "inpaint", StableDiffusionInpaintPipeline, ("image", "mask_image")),
    "sdxl": (StableDiffusionXLPipeline, "sdxl", StableDiffusionXLPipeline, ()),
    "auto-sd": (AutoPipelineForText2Image, "sd", StableDiffusionPipeline, ()),
    "auto-sdxl": (AutoPipelineForText2Image, "sdxl", StableDiffusionXLPipeline, ()),
}


@uncalibrated_ok
@pytest.mark.parametrize("case", list(CASES))
def test_every_pipeline_class_gives_the_image_stock_autoencoder_kl_gives(case, folders, inputs):
    pipeline_cls, folder, resolved_cls, input_names = CASES[case]
    call_inputs = {name: inputs[name] for name in input_names}
    pipe = load_pipeline(folders[folder], ours_from(folders[folder]), pipeline_cls)
    assert type(pipe) is resolved_cls and type(pipe.vae) is CustomAutoencoderKL
    reference = pipeline_cls.from_pretrained(folders[folder])  # the same folder with its own AutoencoderKL
    assert type(reference.vae) is AutoencoderKL

    ours, stock = generate(pipe, **call_inputs), generate(reference, **call_inputs)
    assert ours.shape == (1, SIZE, SIZE, 3) and ours.std() > 0.01
    difference = np.abs(ours - stock).max()
    assert difference <= 1e-4, f"{case}: max |ours - AutoencoderKL| = {difference:.3g}"


def overflowing_pair(force_upcast: bool):
    """Stock and ours with equal weights whose decoder overflows float16 (65504), as SDXL's VAE does."""
    stock = stock_vae(scaling_factor=SDXL_SCALE, force_upcast=force_upcast)
    with torch.no_grad():
        stock.post_quant_conv.weight.mul_(1e5)  # GroupNorm right after brings fp32 back to unit scale
    return stock, CustomAutoencoderKL.from_autoencoder_kl(stock)


def decoder_input_dtypes(vae) -> list:
    seen = []
    vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    return seen


@pytest.mark.parametrize("force_upcast", [True, False])
def test_sdxl_in_fp16_upcasts_our_vae_exactly_as_autoencoder_kl(force_upcast, folders):
    stock, ours = overflowing_pair(force_upcast)
    pipe = load_pipeline(folders["sdxl"], ours, StableDiffusionXLPipeline, dtype=torch.float16)
    reference = StableDiffusionXLPipeline.from_pretrained(folders["sdxl"], vae=stock.half(), dtype=torch.float16)
    assert pipe.vae.dtype == torch.float16 and pipe.unet.dtype == torch.float16
    seen_ours, seen_stock = decoder_input_dtypes(pipe.vae), decoder_input_dtypes(reference.vae)
    image, reference_image = generate(pipe), generate(reference)

    assert seen_ours == seen_stock == [torch.float32 if force_upcast else torch.float16]
    assert pipe.vae.dtype == torch.float16  # cast back after decoding, as for AutoencoderKL
    if force_upcast:
        assert np.isfinite(image).all()
        difference = np.abs(image - reference_image).max()
        assert difference <= 1e-3, f"SDXL fp16, VAE upcast: max |ours - AutoencoderKL| = {difference:.3g}"
    else:  # the same overflow in both: upcasting is what keeps NaNs out
        assert np.isnan(image).any() and np.isnan(reference_image).any()


# diffusers 0.42 renamed torch_dtype to dtype; the old spelling must reach our VAE too
@uncalibrated_ok
@pytest.mark.parametrize("dtype, dtype_keyword", [(torch.float16, "dtype"), (torch.bfloat16, "torch_dtype")])
def test_sd_runs_in_reduced_precision_like_autoencoder_kl(dtype, dtype_keyword, folders):
    pipe = load_pipeline(folders["sd"], ours_from(folders["sd"]), **{dtype_keyword: dtype})
    reference = StableDiffusionPipeline.from_pretrained(folders["sd"], dtype=dtype)
    assert pipe.vae.dtype == dtype
    image = generate(pipe)
    assert np.isfinite(image).all()
    difference = np.abs(image - generate(reference)).max()
    assert difference <= 1e-2, f"{dtype}: max |ours - AutoencoderKL| = {difference:.3g}"


@uncalibrated_ok
def test_vae_slicing_and_tiling_through_the_pipeline(folders, monkeypatch):
    pipe = load_pipeline(folders["sd"], ours_from(folders["sd"]))
    whole = generate(pipe, num_images_per_prompt=2)
    decoded_batches = []
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: decoded_batches.append(args[0].shape[0]))
    # diffusers 0.42 removed pipe.enable_vae_slicing()/enable_vae_tiling(); these are what they called
    pipe.vae.enable_slicing()
    sliced = generate(pipe, num_images_per_prompt=2)
    assert decoded_batches == [1, 1]
    np.testing.assert_allclose(sliced, whole, rtol=0, atol=1e-5)

    tiled_calls = []
    tiled_decode = tiling.tiled_decode
    monkeypatch.setattr(tiling, "tiled_decode", lambda *a, **k: tiled_calls.append(1) or tiled_decode(*a, **k))
    pipe.vae.enable_tiling(tile_size=8)  # smaller than the 16-pixel images
    tiled = generate(pipe, num_images_per_prompt=2)
    assert len(tiled_calls) == 2
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def test_save_pretrained_then_from_pretrained_brings_our_vae_back(folders, tmp_path, monkeypatch):
    vae = calibrated(tiny_vae(seed=3))
    pipe = load_pipeline(folders["sd"], vae)
    before = generate(pipe)
    pipe.save_pretrained(tmp_path / "saved")

    model_index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert model_index["vae"] == ["sd_custom_vae.autoencoder_kl", "CustomAutoencoderKL"]
    for pipeline_cls in (StableDiffusionPipeline, AutoPipelineForText2Image):
        loaded = pipeline_cls.from_pretrained(tmp_path / "saved")
        assert type(loaded.vae) is CustomAutoencoderKL
        assert loaded.vae.config[CALIBRATION_KEY] == vae.config[CALIBRATION_KEY]
        np.testing.assert_array_equal(generate(loaded), before)

    # Without `import sd_custom_vae`: diffusers 0.42 on imports no module a repository names and says what to do;
    # 0.41 imports it itself.
    monkeypatch.delitem(sys.modules, "sd_custom_vae.autoencoder_kl")
    if Version(diffusers.__version__) >= Version("0.42"):
        with pytest.raises(ValueError, match="import sd_custom_vae.autoencoder_kl before calling `from_pretrained`"):
            StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    else:
        loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
        assert type(loaded.vae).__name__ == "CustomAutoencoderKL"
        np.testing.assert_array_equal(generate(loaded), before)


# -- bad input: clear errors before the pipeline is loaded ----------------------------------------


@pytest.fixture
def no_pipeline_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the bad input was noticed")

    for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline, DDPMPipeline):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def test_latent_channels_that_the_unet_cannot_take(folders, no_pipeline_loading):
    with pytest.raises(ValueError, match="3-channel latents but StableDiffusionPipeline's UNet takes 4 input"):
        load_pipeline(folders["sd"], calibrated(tiny_vae(latent_channels=3)))
    # a 9-channel inpainting UNet takes 4 + 1 + 4 channels, but only in an inpainting pipeline
    with pytest.raises(ValueError, match="takes 9 input channels"):
        load_pipeline(folders["inpaint"], calibrated(tiny_vae()), StableDiffusionPipeline)


def test_paths_that_do_not_exist(folders, tmp_path, no_pipeline_loading):
    missing = tmp_path / "no-such-vae.safetensors"
    with pytest.raises(FileNotFoundError, match="no such VAE file or folder: .*no-such-vae.safetensors"):
        load_pipeline(tmp_path / "no-such-model", missing)  # the VAE path is checked first
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path, calibrated(tiny_vae()))
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_pipeline(str(tmp_path / "no-such-model"), calibrated(tiny_vae()))


def test_a_pipeline_without_a_vae(folders, no_pipeline_loading):
    with pytest.raises(ValueError, match="DDPMPipeline has no VAE component"):
        load_pipeline(folders["sd"], calibrated(tiny_vae()), DDPMPipeline)
    with pytest.raises(ValueError, match="DDPMPipeline has no VAE component"):
        inject_vae(DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()), calibrated(tiny_vae()))


# -- latent scale warnings ------------------------------------------------------------------------

UNET = {"in_channels": 4}
SD_VAE = {"scaling_factor": 0.18215}


def scale_warnings(vae, original=SD_VAE) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_compatibility(vae, UNET, original, "StableDiffusionPipeline")
    return [str(w.message) for w in caught if issubclass(w.category, LatentScaleWarning)]


def test_never_calibrated_rule():
    assert not is_calibrated(tiny_vae().config)  # the default 0.18215 and no record
    assert is_calibrated(calibrated(tiny_vae()).config)  # the record, even at the default scale
    assert is_calibrated(tiny_vae(scaling_factor=SDXL_SCALE).config)  # set deliberately, like SDXL's
    [message] = scale_warnings(tiny_vae())
    assert "never calibrated" in message and "sd-custom-vae calibrate" in message
    assert scale_warnings(calibrated(tiny_vae())) == []


def test_warns_when_the_scale_is_far_from_the_pipelines_own_vae():
    assert scale_warnings(tiny_vae(scaling_factor=0.19)) == []  # 4% off
    [message] = scale_warnings(tiny_vae(scaling_factor=0.3))
    assert "differs by 65%" in message
    assert len(scale_warnings(tiny_vae(scaling_factor=0.19), original={"scaling_factor": SDXL_SCALE})) == 1
    [message] = scale_warnings(calibrated(tiny_vae(shift_factor=0.2)))
    assert "shift_factor=0.2" in message and "never apply" in message


def test_load_pipeline_warns_before_loading(folders, no_pipeline_loading):
    with pytest.warns(LatentScaleWarning, match="never calibrated"), pytest.raises(AssertionError, match="loaded"):
        load_pipeline(folders["sd"], tiny_vae())


# -- inject_vae -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["sd", "inpaint"])
def test_inject_vae_with_another_downsampling_factor(case, folders, inputs):
    pipeline_cls = StableDiffusionInpaintPipeline if case == "inpaint" else StableDiffusionPipeline
    pipe = pipeline_cls.from_pretrained(folders[case], dtype=torch.bfloat16)
    assert pipe.vae_scale_factor == 2
    vae = calibrated(tiny_vae(block_out_channels=(32, 64, 64)))  # three levels: 4× downsampling
    assert inject_vae(pipe, vae) is pipe and pipe.vae is vae
    assert vae.dtype == torch.bfloat16  # the dtype of the VAE it replaced
    assert pipe.config.vae == ("sd_custom_vae.autoencoder_kl", "CustomAutoencoderKL")
    assert pipe.vae_scale_factor == pipe.image_processor.config.vae_scale_factor == 4
    size = 4 * UNET_SAMPLE_SIZE
    call_inputs = {}
    if case == "inpaint":
        assert pipe.mask_processor.config.vae_scale_factor == 4 and pipe.mask_processor.config.do_binarize
        call_inputs = {name: image.resize((size, size)) for name, image in inputs.items()}
    image = generate(pipe, **call_inputs)
    assert image.shape == (1, size, size, 3) and np.isfinite(image).all()


# -- the generate command and the example ---------------------------------------------------------


def test_generate_command_writes_the_pipelines_image(folders, tmp_path, capsys):
    vae_folder = tmp_path / "vae"
    calibrated(ours_from(folders["sd"])).save_pretrained(vae_folder)
    output = tmp_path / "out" / "dog.png"
    argv = ["generate", "--model", str(folders["sd"]), "--vae", str(vae_folder), PROMPT, "--steps", "2"]
    assert main([*argv, "--seed", "3", "--output", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    assert [p.name for p in output.parent.iterdir()] == ["dog.png"]  # no temporary file left

    pipe = load_pipeline(folders["sd"], vae_folder, AutoPipelineForText2Image)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3)).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(output)), np.asarray(expected))


def test_generate_command_refuses_bad_input_in_one_line(folders, tmp_path, capsys):
    output = tmp_path / "dog.png"
    missing = tmp_path / "missing-vae"
    argv = ["generate", "--model", str(folders["sd"]), "--vae", str(missing), PROMPT, "--output", str(output)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert str(missing) in error and error.count("\n") == 1
    assert not output.exists()


@uncalibrated_ok
def test_example_script_runs(folders, tmp_path):
    spec = importlib.util.spec_from_file_location("example", EXAMPLES / "generate_with_custom_vae.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    vae, vae_file, output = ours_from(folders["sd"]), tmp_path / "my-vae.safetensors", tmp_path / "dog.png"
    save_checkpoint(as_checkpoint(vae.state_dict(), dict(vae.config)), vae_file, to="diffusers")  # one file, our names
    image = example.main(["--model", str(folders["sd"]), "--vae", str(vae_file), "--steps=2", f"--output={output}"])
    assert output.exists() and image.size == (SIZE, SIZE)
