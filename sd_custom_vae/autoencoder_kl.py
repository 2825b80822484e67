"""CustomAutoencoderKL: our network behind the interface diffusers pipelines call on ``pipe.vae``.

It holds the same modules as ``ScratchVAE`` under the same names, so the two share state dicts.
Everything a pipeline reads (``encode(x).latent_dist``, ``decode(z).sample``, ``config.scaling_factor``,
slicing, tiling, ``save_pretrained``/``from_pretrained``) behaves as it does on ``AutoencoderKL``.
"""

from __future__ import annotations

import os

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from torch import nn

import conversion

from . import tiling
from .network import Decoder, Encoder, check_input, validate_config
from .scratch_vae import ScratchVAE


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    # ModelMixin.to(dtype) logs a warning on every cast, even a no-op one; skip the no-ops.
    return model if next(model.parameters()).dtype == dtype else model.to(dtype)


class CustomAutoencoderKL(ModelMixin, AutoencoderMixin, ConfigMixin):
    r"""A KL-regularised VAE, written from scratch, that drops into any Stable Diffusion pipeline as ``vae=``.

    Parameters match ``diffusers.AutoencoderKL`` where they mean the same thing, with the same defaults:
    the same config and weights give the same numbers. ``scaling_factor`` (and ``shift_factor``, or
    ``latents_mean``/``latents_std``) tell pipelines how to scale latents for their UNet;
    ``force_upcast`` tells them to run this VAE in float32 when the rest of the pipeline is float16.
    """

    _supports_gradient_checkpointing = False
    _no_split_modules = ["ResidualBlock", "AttentionBlock"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        validate_config(
            in_channels, out_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups
        )
        self.encoder = Encoder(
            in_channels, block_out_channels, layers_per_block, latent_channels, norm_num_groups, mid_block_add_attention
        )
        self.decoder = Decoder(
            latent_channels, block_out_channels, layers_per_block, out_channels, norm_num_groups, mid_block_add_attention
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None

        self.use_slicing = False
        self.use_tiling = False
        self.tiling = tiling.TilingConfig()

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def enable_tiling(self, tile_size: int | None = None, max_buffer_bytes: int | None = None) -> None:
        """Encode and decode large images tile by tile, at bounded memory and without seams.

        GroupNorm statistics are gathered over the whole image before they are used, so the
        tiled result equals the untiled one up to float rounding. `tile_size` is in image pixels
        (default 512); `max_buffer_bytes` caps each intermediate activation kept whole in memory.
        """
        self.tiling = self.tiling.with_overrides(tile_size, max_buffer_bytes)
        self.use_tiling = True

    # -- encode ---------------------------------------------------------------------------------

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tiling.tile_size:
            moments = tiling.tiled_encode(self.encoder, x, self.tiling)
        else:
            moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images in [-1, 1], shape (batch, channels, height, width) → the latent distribution."""
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(one) for one in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # -- decode ---------------------------------------------------------------------------------

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        check_input(z, self.config.latent_channels, 1, "latents")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        if self.use_tiling and max(z.shape[-2:]) * self.downsampling_factor > self.tiling.tile_size:
            return tiling.tiled_decode(self.decoder, z, self.tiling)
        return self.decoder(z)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents (unscaled: divide a pipeline's latents by ``scaling_factor`` first) → images in [-1, 1].

        `generator` is accepted for interface parity with ``AutoencoderKL``; decoding is deterministic.
        """
        if self.use_slicing and z.shape[0] > 1:
            sample = torch.cat([self._decode(one) for one in z.split(1)])
        else:
            sample = self._decode(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    # -- other faces of the same weights --------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, checkpoint: conversion.VAECheckpoint, **config_overrides) -> "CustomAutoencoderKL":
        """Build from a validated checkpoint (see ``conversion.load_checkpoint``)."""
        config = {k: v for k, v in {**checkpoint.config, **config_overrides}.items() if k in conversion.CONFIG_KEYS}
        model = cls(**config)
        model.load_state_dict(checkpoint.state_dict)
        dtypes = {t.dtype for t in checkpoint.state_dict.values() if t.is_floating_point()}
        return _cast(model, dtypes.pop()) if len(dtypes) == 1 else model

    @classmethod
    def from_single_file(
        cls, path: str | os.PathLike, config: dict | None = None, torch_dtype: torch.dtype | None = None, **overrides
    ) -> "CustomAutoencoderKL":
        """Load any supported checkpoint: an LDM/A1111/ComfyUI VAE file, a whole SD checkpoint, a diffusers
        folder or a file of ours (``.safetensors``, or a pickle read with ``weights_only=True``).

        The architecture is read from the tensor shapes; `config` or keyword `overrides` supply what
        weights cannot tell, such as ``scaling_factor=0.13025`` for an SDXL VAE.
        """
        model = cls.from_checkpoint(conversion.load_checkpoint(path, config), **overrides)
        return model if torch_dtype is None else _cast(model, torch_dtype)

    @classmethod
    def from_scratch_checkpoint(cls, path: str | os.PathLike, **overrides) -> "CustomAutoencoderKL":
        """Load a ``ScratchVAE`` state dict saved by training (our names), refusing any other scheme."""
        checkpoint = conversion.load_checkpoint(path)
        if checkpoint.scheme != "scratch":
            raise ValueError(
                f"{path}: holds {checkpoint.scheme} key names, not a ScratchVAE state dict; use from_single_file"
            )
        return cls.from_checkpoint(checkpoint, **overrides)

    @classmethod
    def from_scratch_vae(cls, vae: ScratchVAE, **latent_space_config) -> "CustomAutoencoderKL":
        """Wrap a trained ``ScratchVAE`` (same weights, shared by copy) for use in a pipeline."""
        model = cls(**vae.config, **latent_space_config)
        model.load_state_dict(vae.state_dict())
        return _cast(model, next(vae.parameters()).dtype)

    def to_scratch_vae(self) -> ScratchVAE:
        architecture = {k: self.config[k] for k in conversion.ARCHITECTURE_KEYS}
        vae = ScratchVAE(**architecture)
        vae.load_state_dict(self.state_dict())
        return vae.to(self.dtype)

    @classmethod
    def from_autoencoder_kl(cls, model_or_path, **kwargs) -> "CustomAutoencoderKL":
        """Same weights as a stock ``diffusers.AutoencoderKL`` (a model, a local folder or a Hub id)."""
        if isinstance(model_or_path, (str, os.PathLike)):
            from diffusers import AutoencoderKL

            model_or_path = AutoencoderKL.from_pretrained(model_or_path, **kwargs)
        config = conversion.from_diffusers_config(dict(model_or_path.config))
        checkpoint = conversion.to_scratch(model_or_path.state_dict(), config, source=type(model_or_path).__name__)
        return cls.from_checkpoint(checkpoint)

    def to_autoencoder_kl(self):
        """A stock ``diffusers.AutoencoderKL`` with identical weights, on the same device and dtype."""
        from diffusers import AutoencoderKL

        config = conversion.to_diffusers_config(dict(self.config))
        model = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(conversion.convert_state_dict(self.state_dict(), "diffusers", dict(self.config)))
        return _cast(model, self.dtype).to(self.device)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        *,
        format: str = "diffusers",
        metrics: dict | None = None,
        reconstructions: str | os.PathLike | None = None,
    ) -> str:
        """Upload as a complete model repo: a stock ``AutoencoderKL`` folder (loadable without this package)
        and/or an LDM single file (`format` "ldm" or "both"), and a model card with `metrics` (a run's
        ``metrics.json``) and the `reconstructions` grid. Returns the commit URL."""
        if not safe_serialization or variant is not None or subfolder is not None:
            raise ValueError("push_to_hub writes one safetensors repo at its root: no pickle, variant or subfolder")
        from .hub import push_vae  # hub imports this module

        result = push_vae(
            self, repo_id, format=format, private=private, token=token, commit_message=commit_message,
            create_pr=create_pr, metrics=metrics, reconstructions=reconstructions,
        )
        return result.commit_url

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "CustomAutoencoderKL":
        """Load a folder or Hub repo saved by ``save_pretrained``; a stock ``AutoencoderKL`` one is converted."""
        config = cls.load_config(pretrained_model_name_or_path, **kwargs)
        if config.get("_class_name") == "AutoencoderKL":
            model = cls.from_autoencoder_kl(pretrained_model_name_or_path, **kwargs)
            return model
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
