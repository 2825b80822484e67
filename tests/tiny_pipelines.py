"""Tiny Stable Diffusion and SDXL pipelines built in code: every component random, nothing downloaded.

Sizes are close to the smallest the diffusers blocks accept, so two denoising steps take a
fraction of a second on a CPU. The UNet takes the given VAE's latent channels; `factories.tiny_vae()`
halves the resolution, so a UNet `sample_size` of 8 makes 16×16 images.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_HIDDEN = 32
UNET_SAMPLE_SIZE = 8
MAX_TOKENS = 16
# A few merges, so the tokenizer really does byte-pair encoding of the prompts the tests use.
MERGES = ["d o", "do g</w>", "o f</w>", "p h", "ph o", "pho t", "phot o</w>"]


def write_tokenizer_files(folder: str | Path) -> Path:
    """A byte-level BPE vocabulary (every byte, alone and word-final, plus the merges) and its merges.txt."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<|startoftext|>", "<|endoftext|>"]
    for char in sorted(ByteLevel.alphabet()):
        tokens += [char, f"{char}</w>"]
    tokens += ["".join(merge.split()) for merge in MERGES]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return folder


def tiny_tokenizer(folder: str | Path) -> CLIPTokenizer:
    # No tokenizer_config.json: the prompt length (CLIP's is 77) is given here.
    return CLIPTokenizer.from_pretrained(write_tokenizer_files(folder), model_max_length=MAX_TOKENS)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_unet(in_channels: int = 4, out_channels: int = 4, **extra) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=UNET_SAMPLE_SIZE,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=4,
        **{  # defaults a caller may override: SDXL its cross-attention width, the adapter tests the block order
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": TEXT_HIDDEN,
            **extra,
        },
    )


def sd_scheduler() -> DDIMScheduler:
    """The noise schedule SD 1.x and SDXL were trained with."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1,
    )


def tiny_sd_pipeline(vae, tokenizer_folder: str | Path, inpainting: bool = False, seed: int = 0):
    """StableDiffusionPipeline (or its inpainting variant, with the 9-channel UNet SD-inpainting uses)."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(tokenizer_folder)
    latent_channels = vae.config.latent_channels
    unet_channels = 2 * latent_channels + 1 if inpainting else latent_channels  # latents + mask + masked image
    pipeline_cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    return pipeline_cls(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(tokenizer)).eval(),
        tokenizer=tokenizer,
        unet=tiny_unet(unet_channels, latent_channels).eval(),
        scheduler=sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(vae, tokenizer_folder: str | Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """SDXL: two text encoders whose hidden states are concatenated, and size/crop conditioning."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(tokenizer_folder)
    time_embed_dim = 8
    unet = tiny_unet(
        vae.config.latent_channels,
        vae.config.latent_channels,
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six size/crop numbers, each embedded, plus the pooled projection of text encoder 2
        projection_class_embeddings_input_dim=6 * time_embed_dim + TEXT_HIDDEN,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(_text_config(tokenizer)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet.eval(),
        scheduler=sd_scheduler(),
        add_watermarker=False,
    )
