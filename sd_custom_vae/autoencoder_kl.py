"""CustomAutoencoderKL: our network behind the interface diffusers and its users touch on a VAE.

It holds the same modules as ``ScratchVAE`` under the same names (``VAEModules``), so the two
share state dicts. Everything a pipeline reads (``encode(x).latent_dist``, ``decode(z).sample``,
``config.scaling_factor``, slicing, tiling) and what diffusers does to any model (the whole stock
``AutoencoderKL`` config, ``from_pretrained``/``save_pretrained`` with their keyword arguments,
offloading and casting hooks, gradient checkpointing, attention processors, PEFT adapters)
behaves as it does on ``AutoencoderKL``.
"""

from __future__ import annotations

import os
import warnings

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionMixin
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

import conversion

from . import hub_upload, tiling
from .network import AttentionBlockProcessor, NearestUpsampleConv2d, VAEModules, check_input
from .scratch_vae import ScratchVAE


class AssumedConfigWarning(UserWarning):
    """A checkpoint did not say a config value the weights cannot tell; the usual one was assumed."""


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # ModelMixin.to(dtype) logs a warning on every cast, even a no-op one; skip the no-ops.
    return model if next(model.parameters()).dtype == dtype else model.to(dtype)


class CustomAutoencoderKL(ModelMixin, AttentionMixin, AutoencoderMixin, ConfigMixin, PeftAdapterMixin, VAEModules):
    r"""A KL-regularised VAE, written from scratch, that drops into any Stable Diffusion pipeline as ``vae=``.

    The constructor takes every ``diffusers.AutoencoderKL`` argument, in the same order and with the
    same meaning: the same config and weights give the same numbers. ``down_block_types``,
    ``up_block_types`` and ``act_fn`` name what diffusers builds; only the SD VAE's own values
    (``DownEncoderBlock2D``, ``UpDecoderBlock2D``, ``silu``) describe this network, and ``None``
    means one of those per level. ``scaling_factor`` (and ``shift_factor``, or
    ``latents_mean``/``latents_std``) tell pipelines how to scale latents for their UNet;
    ``force_upcast`` tells them to run this VAE in float32 when the rest of the pipeline is float16.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResidualBlock", "AttentionBlock"]
    _group_offload_block_modules = ["quant_conv", "post_quant_conv", "encoder", "decoder"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] | None = None,
        up_block_types: tuple[str, ...] | None = None,
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
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
        architecture = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            block_out_channels=tuple(block_out_channels) if isinstance(block_out_channels, list) else block_out_channels,
            layers_per_block=layers_per_block,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_add_attention,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
        )
        conversion.validate_config(
            dict(
                architecture, down_block_types=down_block_types, up_block_types=up_block_types, act_fn=act_fn,
                sample_size=sample_size, scaling_factor=scaling_factor, shift_factor=shift_factor,
                latents_mean=latents_mean, latents_std=latents_std, force_upcast=force_upcast,
            )
        )
        self.build_network(**architecture)
        # A saved config names every level, as a stock AutoencoderKL's does.
        levels = len(block_out_channels)
        self.register_to_config(
            down_block_types=[conversion.DIFFUSERS_DOWN_BLOCK] * levels, up_block_types=[conversion.DIFFUSERS_UP_BLOCK] * levels
        )

        self.use_slicing = False
        self.use_tiling = False
        self.tiling = tiling.TilingConfig()

    def enable_tiling(self, tile_size: int | None = None, max_buffer_bytes: int | None = None) -> None:
        """Encode and decode large images tile by tile, at bounded memory and without seams.

        GroupNorm statistics are gathered over the whole image before they are used, so the
        tiled result equals the untiled one up to float rounding. `tile_size` is in image pixels
        (default 512); `max_buffer_bytes` caps each intermediate activation kept whole in memory.
        """
        self.tiling = self.tiling.with_overrides(tile_size, max_buffer_bytes)
        self.use_tiling = True

    def set_default_attn_processor(self) -> None:
        """Back to this VAE's own attention computation (``AttentionBlockProcessor``) in every attention block."""
        self.set_attn_processor(AttentionBlockProcessor())

    # -- PEFT -----------------------------------------------------------------------------------

    def add_adapter(self, adapter_config, adapter_name: str = "default") -> None:
        super().add_adapter(adapter_config, adapter_name)
        self._adapt_upsample_lora()

    def load_lora_adapter(self, pretrained_model_name_or_path_or_dict, prefix="transformer", hotswap: bool = False, **kwargs):
        result = super().load_lora_adapter(pretrained_model_name_or_path_or_dict, prefix=prefix, hotswap=hotswap, **kwargs)
        self._adapt_upsample_lora()
        return result

    def _adapt_upsample_lora(self) -> None:
        """PEFT builds a conv's LoRA pair with the base conv's class. Around an upsampling conv the first
        (A, on the block's input) must upsample as the base does; the second (B, a 1×1 conv of A's already
        enlarged output) must not: it becomes a plain ``Conv2d`` with the same weights."""
        from peft.tuners.lora import LoraLayer

        for name, layer in self.named_modules():
            if not isinstance(layer, LoraLayer) or not isinstance(layer.get_base_layer(), NearestUpsampleConv2d):
                continue
            for adapter, conv in layer.lora_B.items():
                if layer.use_dora.get(adapter):
                    raise ValueError(f"DoRA is not supported on the upsampling conv {name}: leave it out of target_modules")
                if type(conv) is NearestUpsampleConv2d:
                    plain = torch.nn.Conv2d(
                        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, groups=conv.groups,
                        bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
                    )
                    plain.load_state_dict(conv.state_dict())
                    plain.requires_grad_(conv.weight.requires_grad)
                    layer.lora_B[adapter] = plain

    def _check_dtype(self, x: torch.Tensor, what: str) -> None:
        if x.dtype != self.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{what} is {x.dtype} but the VAE computes in {self.dtype}: convert it with .to({self.dtype}) "
                "(or the VAE with .to(dtype))"
            )

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
        check_input(x, self.config.in_channels, self.downsampling_factor, "image")
        self._check_dtype(x, "image")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(one) for one in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    # -- decode ---------------------------------------------------------------------------------

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
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
        check_input(z, self.config.latent_channels, 1, "latents")
        self._check_dtype(z, "latents")
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

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "CustomAutoencoderKL":
        """``ModelMixin.from_pretrained`` with all its keyword arguments, on a folder or Hub repo of ours or of a
        stock ``AutoencoderKL`` (its weights are renamed on load, see ``_load_pretrained_model``).

        A folder of another kind of model, or one that leaves any weight out, is an error naming what is wrong:
        diffusers would otherwise return a model with those weights left on the meta device.
        """
        config = cls.load_config(
            pretrained_model_name_or_path,
            **{k: kwargs[k] for k in ("subfolder", "revision", "cache_dir", "token", "local_files_only", "proxies",
                                      "force_download") if k in kwargs},
        )
        class_name = config.get("_class_name")
        if class_name not in (None, cls.__name__, "AutoencoderKL"):
            raise ValueError(
                f"{pretrained_model_name_or_path}: holds a {class_name}, not a VAE "
                f"(AutoencoderKL or {cls.__name__}); for a pipeline folder pass subfolder='vae'"
            )
        output_loading_info = kwargs.get("output_loading_info", False)
        result = super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "output_loading_info": True})
        model, info = result
        missing = sorted(info["missing_keys"])
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path}: {len(missing)} weight(s) missing from the checkpoint: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; the file is incomplete or for another model"
            )
        return (model, info) if output_loading_info else model

    @classmethod
    def _load_pretrained_model(
        cls, model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
    ):
        """Where ``from_pretrained`` reads the checkpoint: a stock ``AutoencoderKL`` (or LDM) one, sharded or not,
        is renamed to our names first. Everything else (dtype, device map, missing-key report) is diffusers'."""
        if conversion.key_scheme(loaded_keys) != "scratch":
            if state_dict is None:  # sharded: read every shard here (a VAE is small enough to hold at once)
                from diffusers.models.model_loading_utils import load_state_dict

                state_dict = {}
                for shard in resolved_model_file:
                    state_dict.update(load_state_dict(shard))
            state_dict = conversion.rename_to_scratch(state_dict)
            loaded_keys = list(state_dict)
        return super()._load_pretrained_model(
            model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
        )

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
        cls,
        pretrained_model_link_or_path_or_dict: str | os.PathLike | dict,
        config: dict | str | os.PathLike | None = None,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> "CustomAutoencoderKL":
        """Load a single checkpoint: an LDM/A1111/ComfyUI VAE file, a whole SD checkpoint, a file of ours
        (``.safetensors``, or a pickle read with ``weights_only=True``), a diffusers folder, a state dict,
        or a file on the Hub (``https://huggingface.co/ORG/NAME/blob/main/FILE`` or ``ORG/NAME/FILE``).

        The architecture is read from the tensor shapes. `config` supplies what weights cannot tell: a
        dict of config values, or (as in diffusers) a model folder or Hub repo id, with `subfolder`,
        whose ``config.json`` is used. Other keyword arguments: config overrides such as
        ``scaling_factor=0.13025`` for an SDXL VAE or ``norm_num_groups``, and Hub options
        (``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``force_download``).
        """
        from .sources import HUB_OPTIONS, resolve_file

        hub_options = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
        if isinstance(config, (str, os.PathLike)):
            config = dict(cls.load_config(config, subfolder=subfolder, **hub_options))
        config = conversion.from_diffusers_config(config) if config else {}
        overrides = {k: v for k, v in kwargs.items() if k in conversion.CONFIG_KEYS}
        unknown = sorted(set(kwargs) - set(overrides))
        if unknown:
            raise TypeError(f"from_single_file got unexpected keyword argument(s): {', '.join(unknown)}")
        source = pretrained_model_link_or_path_or_dict
        if isinstance(source, dict):
            checkpoint = conversion.to_scratch(source, {**config, **overrides})
        else:
            path = resolve_file(source, **hub_options)
            checkpoint = conversion.load_checkpoint(path, {**config, **overrides})
        for key, value in checkpoint.assumed.items():
            warnings.warn(
                f"{checkpoint.source}: assumed {key}={value}: the file does not record it and the weights cannot tell "
                f"it; pass {key}=... (or config=) if this VAE was built with another value",
                AssumedConfigWarning,
                stacklevel=2,
            )
        model = cls.from_checkpoint(checkpoint, **overrides)
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

    # -- other faces of the same weights --------------------------------------------------------

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
            return cls.from_pretrained(model_or_path, **kwargs)
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
        result = hub_upload.push_vae(
            self, repo_id, format=format, private=private, token=token, commit_message=commit_message,
            create_pr=create_pr, metrics=metrics, reconstructions=reconstructions,
        )
        return result.commit_url
