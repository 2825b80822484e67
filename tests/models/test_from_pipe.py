"""``Target.from_pipe(pipe)`` carries our VAE over, as it does diffusers' own ``AutoencoderKL``.

diffusers' ``from_pipe`` keeps a model only if its exact class is in the new pipeline's type hint; our class
passes through its metaclass (``models/autoencoder_kl.py``). Each switch below runs twice on the same tiny
components, once with our VAE and once with a stock ``AutoencoderKL`` holding the same weights: the outputs match.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DiffusionPipeline,
    MotionAdapter,
    StableDiffusionAdapterPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
    StableVideoDiffusionPipeline,
    T2IAdapter,
)
from factories import tiny_vae
from tiny_pipelines import UNET_SAMPLE_SIZE, tiny_sd_pipeline, tiny_unet

from sd_custom_vae import CustomAutoencoderKL
from sd_custom_vae.models.pipeline import from_pipe

PROMPT = "a photo of a dog"
SIZE = 2 * UNET_SAMPLE_SIZE  # the tiny VAE halves the resolution
CHANNELS = (8, 16)  # tiny_unet's block_out_channels


def stock_copy(vae: CustomAutoencoderKL) -> AutoencoderKL:
    stock = AutoencoderKL(**vae.config)
    stock.load_state_dict(vae.state_dict(), strict=True)
    return stock.eval()


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """Two SD pipelines sharing every component but the VAE: ours, and a stock one with the same weights.

    The UNet starts with a cross-attention block: T2I-Adapter adds its first feature map inside such a block,
    before it downsamples."""
    vae = tiny_vae()
    base = tiny_sd_pipeline(vae, tmp_path_factory.mktemp("tokenizer"))
    torch.manual_seed(0)
    unet = tiny_unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")
    ).eval()
    ours = StableDiffusionPipeline(**{**base.components, "unet": unet}, requires_safety_checker=False)
    stock = StableDiffusionPipeline(**{**ours.components, "vae": stock_copy(vae)}, requires_safety_checker=False)
    return ours, stock


def motion_adapter() -> MotionAdapter:
    torch.manual_seed(1)
    return MotionAdapter(
        block_out_channels=CHANNELS, motion_layers_per_block=1, motion_num_attention_heads=2,
        motion_norm_num_groups=4, motion_max_seq_length=8,
    ).eval()


def t2i_adapter() -> T2IAdapter:
    torch.manual_seed(2)
    # downscale_factor 2: the adapter's first features come at the latents' size (the tiny VAE halves the image)
    return T2IAdapter(in_channels=3, channels=list(CHANNELS), num_res_blocks=1, downscale_factor=2).eval()


def run(pipe, **call_kwargs) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    output = pipe(PROMPT, num_inference_steps=2, generator=generator, output_type="np", height=SIZE, width=SIZE,
                  **call_kwargs)
    return np.asarray(output.frames if hasattr(output, "frames") else output.images)


CONDITION = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
SWITCHES = {  # the new pipeline, builders of the components it adds, what its call takes besides the prompt
    "pag": (StableDiffusionPAGPipeline, {}, dict(pag_scale=3.0)),
    "animatediff": (AnimateDiffPipeline, dict(motion_adapter=motion_adapter), dict(num_frames=2)),
    "t2i-adapter": (StableDiffusionAdapterPipeline, dict(adapter=t2i_adapter), dict(image=CONDITION)),
}


@pytest.mark.parametrize("name", SWITCHES)
def test_from_pipe_keeps_our_vae_and_matches_the_stock_one(pipes, name):
    pipeline_cls, builders, call_kwargs = SWITCHES[name]
    components = {key: build() for key, build in builders.items()}
    ours, stock = pipes
    switched = pipeline_cls.from_pipe(ours, **components)
    assert switched.vae is ours.vae
    reference = pipeline_cls.from_pipe(stock, **components)
    assert type(reference.vae) is AutoencoderKL
    ours_out, stock_out = run(switched, **call_kwargs), run(reference, **call_kwargs)
    difference = np.abs(ours_out - stock_out).max()
    print(f"{name}: max |ours - stock| = {difference:.3g}")
    assert ours_out.shape == stock_out.shape
    assert difference < 1e-5
    # and back; AnimateDiff's UNet is a UNetMotionModel built from ours and it has no safety checker: SD gets both
    back = StableDiffusionPipeline.from_pipe(
        switched, unet=ours.unet, safety_checker=None, requires_safety_checker=False
    )
    assert back.vae is ours.vae


class UserVAE(CustomAutoencoderKL):
    """A user's subclass of ours: a method more."""

    def describe(self) -> str:
        return "mine"


class UntypedPipeline(DiffusionPipeline):
    """A community pipeline whose ``vae`` has no type hint: diffusers' from_pipe drops any VAE there, stock too."""

    def __init__(self, vae):
        super().__init__()
        self.register_modules(vae=vae)


def test_our_class_equals_autoencoder_kl_only_where_from_pipe_compares():
    assert AutoencoderKL == CustomAutoencoderKL and CustomAutoencoderKL == AutoencoderKL
    assert not AutoencoderKL != CustomAutoencoderKL
    assert CustomAutoencoderKL in (AutoencoderKL,) and UserVAE in (AutoencoderKL,)
    assert UserVAE != CustomAutoencoderKL  # only AutoencoderKL itself is the stand-in's peer
    # hashing stays by identity: as dict keys and in sets the classes stay apart
    assert len({AutoencoderKL: 0, CustomAutoencoderKL: 1}) == 2
    assert CustomAutoencoderKL not in {AutoencoderKL}


def test_a_user_subclass_of_ours_switches_too(pipes):
    ours, _ = pipes
    user_pipe = StableDiffusionPipeline(**{**ours.components, "vae": UserVAE(**ours.vae.config)},
                                        requires_safety_checker=False)
    assert StableDiffusionPAGPipeline.from_pipe(user_pipe).vae is user_pipe.vae


def test_from_pipe_helper_carries_the_vae_where_no_hint_names_a_class(pipes):
    ours, stock = pipes
    for pipe in (ours, stock):
        with pytest.raises(ValueError, match="expected"):
            UntypedPipeline.from_pipe(pipe)  # diffusers drops the VAE, then reports it missing
        assert from_pipe(UntypedPipeline, pipe).vae is pipe.vae


def test_from_pipe_helper_refuses_a_pipeline_built_for_another_vae_in_one_line(pipes):
    ours, _ = pipes
    with pytest.raises(ValueError, match=r"StableVideoDiffusionPipeline takes a VAE of class "
                                         r"AutoencoderKLTemporalDecoder.*CustomAutoencoderKL.*cannot use it"):
        from_pipe(StableVideoDiffusionPipeline, ours)
