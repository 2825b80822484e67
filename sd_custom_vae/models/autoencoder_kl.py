"""CustomAutoencoderKL: our network, as an ``AutoencoderKL`` to everything that looks.

It is a subclass of diffusers' ``AutoencoderKL`` (``isinstance`` holds: pipelines' type checks,
``pipe.fuse_qkv_projections()``, third-party code) whose constructor never runs ``AutoencoderKL``'s: the
modules are ours (``VAEModules``), under diffusers' names, so state dicts, PEFT configs and adapter files,
offload groups and code that walks ``decoder.up_blocks`` work unchanged. Every method of ``AutoencoderKL`` that
computes is overridden here, so nothing of diffusers' network is built or run inside this class: encode and
decode, the exact tiling, QKV fusion and the attention processors are ours.
"""

from __future__ import annotations

import sys

import torch
from diffusers import AutoencoderKL, ModelMixin  # noqa: F401 (ModelMixin: see the end of this module)
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..base.errors import UserError
from ..network import DEFAULT, Architecture, AttentionBlockProcessor, NearestUpsampleConv2d, VAEModules, check_input
from ..network.config import DIFFUSERS_DOWN_BLOCK, DIFFUSERS_UP_BLOCK, LATENT_SPACE, validate_config
from . import fp16_rescale, tiling
from .checkpoint_io import CheckpointIO


class _AutoencoderKLClass(type):
    """The class of ``CustomAutoencoderKL`` (and of its subclasses): such a class compares equal to diffusers'
    ``AutoencoderKL``, so that ``Pipeline.from_pipe(pipe)`` carries our VAE over as it does the stock one.

    ``DiffusionPipeline.from_pipe`` keeps a model component only if ``type(component) in component_types[name]``
    (``diffusers/pipelines/pipeline_utils.py``), where ``component_types[name]`` is the tuple of classes the new
    pipeline's type hint names: an exact-type test, which a subclass of ``AutoencoderKL`` fails, so diffusers
    would drop our VAE and then raise that ``vae`` was not passed. Subclasses of ours pass too: diffusers'
    exact test is there for components a pipeline converts by their exact type (AnimateDiff turns a
    ``UNet2DConditionModel`` into a ``UNetMotionModel``); no pipeline does that to a VAE, and a subclass of ours
    still has ``AutoencoderKL``'s interface and our network.
    """

    def __eq__(cls, other):
        # from_pipe's `type(vae) in (AutoencoderKL,)` runs `AutoencoderKL == type(vae)`, and answers True here:
        # Python asks the right operand first when its class (this metaclass) subclasses the left's (type).
        if other is AutoencoderKL:
            return True
        return super().__eq__(other)  # identity, as for any class; != is its negation

    # Defining __eq__ would make classes unhashable. The hash stays type's, the identity's: dicts and sets compare
    # hashes before they call __eq__, so CustomAutoencoderKL and AutoencoderKL stay two keys there; only ==, !=,
    # `in` on a tuple or list and .index() see them as one.
    __hash__ = type.__hash__


class CustomAutoencoderKL(
    CheckpointIO, tiling.TilingMethods, VAEModules, AutoencoderKL, metaclass=_AutoencoderKLClass
):
    r"""A KL-regularised VAE, written from scratch, that drops into any Stable Diffusion pipeline as ``vae=``.

    The constructor takes every ``diffusers.AutoencoderKL`` argument, in the same order and with the
    same meaning: the same config and weights give the same numbers.

    Args:
        in_channels: Channels of the input images.
        out_channels: Channels of the output images.
        down_block_types: What diffusers builds for each encoder level: only ``DownEncoderBlock2D`` describes this
            network; ``None`` means one per level.
        up_block_types: The same for the decoder: only ``UpDecoderBlock2D``; ``None`` means one per level.
        block_out_channels: Channels of each resolution level, first to last.
        layers_per_block: Residual blocks per encoder level (the decoder has one more).
        act_fn: The activation: only ``silu`` describes this network.
        latent_channels: Channels of the latent.
        norm_num_groups: GroupNorm's groups.
        sample_size: The image size the VAE was trained at; tiling (when enabled) starts above it.
        scaling_factor: What pipelines multiply the latents by for their UNet (``sd-custom-vae calibrate``).
        shift_factor: What they subtract first (FLUX), or None.
        latents_mean: A per-channel mean pipelines normalise the latents with instead (SDXL-style), or None.
        latents_std: The per-channel standard deviation that goes with it, or None.
        force_upcast: Tells pipelines to run this VAE in float32 when the rest of the pipeline is float16.
        use_quant_conv: Whether a 1×1 conv follows the encoder.
        use_post_quant_conv: Whether a 1×1 conv precedes the decoder.
        mid_block_add_attention: Whether the mid blocks hold a self-attention layer.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResidualBlock", "AttentionBlock"]
    _group_offload_block_modules = ["quant_conv", "post_quant_conv", "encoder", "decoder"]

    # diffusers' config is this signature, so it restates Architecture's fields (names, types, defaults) in
    # AutoencoderKL's order: tests/network/test_architecture.py holds the two equal.
    @register_to_config
    def __init__(
        self,
        in_channels: int = DEFAULT.in_channels,
        out_channels: int = DEFAULT.out_channels,
        down_block_types: tuple[str, ...] | None = None,
        up_block_types: tuple[str, ...] | None = None,
        block_out_channels: tuple[int, ...] = DEFAULT.block_out_channels,
        layers_per_block: int = DEFAULT.layers_per_block,
        act_fn: str = "silu",
        latent_channels: int = DEFAULT.latent_channels,
        norm_num_groups: int = DEFAULT.norm_num_groups,
        sample_size: int = LATENT_SPACE.sample_size,
        scaling_factor: float = LATENT_SPACE.scaling_factor,
        shift_factor: float | None = LATENT_SPACE.shift_factor,
        latents_mean: tuple[float, ...] | None = LATENT_SPACE.latents_mean,
        latents_std: tuple[float, ...] | None = LATENT_SPACE.latents_std,
        force_upcast: bool = LATENT_SPACE.force_upcast,
        use_quant_conv: bool = DEFAULT.use_quant_conv,
        use_post_quant_conv: bool = DEFAULT.use_post_quant_conv,
        mid_block_add_attention: bool = DEFAULT.mid_block_add_attention,
    ):
        # AutoencoderKL.__init__ would build diffusers' Encoder and Decoder: go past it, to ModelMixin's.
        super(AutoencoderKL, self).__init__()
        # @register_to_config has recorded every argument in self.config before this body runs
        validate_config(dict(self.config))
        self.build_network(Architecture.from_config(self.config))
        # A saved config names every level, as a stock AutoencoderKL's does.
        levels = len(block_out_channels)
        self.register_to_config(
            down_block_types=[DIFFUSERS_DOWN_BLOCK] * levels,
            up_block_types=[DIFFUSERS_UP_BLOCK] * levels
        )
        self.use_slicing = False
        self.use_tiling = False
        self.original_attn_processors = None  # what fuse_qkv_projections replaced
        # as diffusers: images larger than sample_size are tiled
        tile = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tiling = tiling.TilingConfig(tile_size=max(tile, 8))
        self.tile_overlap_factor = 0.25  # AutoencoderKL's attribute; exact tiling needs no overlap

    # -- float16 ------------------------------------------------------------------------------------

    def make_fp16_safe(
        self, images: torch.Tensor | None = None, latents: torch.Tensor | None = None
    ) -> fp16_rescale.Fp16Report:
        """Rescale this VAE's activations, exactly and without training, so that it runs in float16 without
        overflow; sets ``force_upcast`` False. See ``fp16_rescale.py``.

        Args:
            images: Images in [-1, 1] to measure the encoder on (default: crops of the built-in photos).
            latents: Latents to measure the decoder on (default: random latents of a diffusion model's spread).
        """
        images = fp16_rescale.calibration_images() if images is None else images
        latents = fp16_rescale.calibration_latents(self) if latents is None else latents
        return fp16_rescale.make_fp16_safe(self, images.to(self.device), latents.to(self.device))

    # -- attention -----------------------------------------------------------------------------------

    def set_default_attn_processor(self) -> None:
        """Back to this VAE's own attention computation (``AttentionBlockProcessor``) in every attention block."""
        self.set_attn_processor(AttentionBlockProcessor())

    def fuse_qkv_projections(self) -> None:
        """One fused query-key-value projection per attention block (what ``pipe.fuse_qkv_projections()`` asks for);
        the outputs stay the same."""
        self.original_attn_processors = self.attn_processors
        AttentionMixin.fuse_qkv_projections(self)

    def unfuse_qkv_projections(self) -> None:
        """Separate projections again, and the processors that were set before fusing."""
        AttentionMixin.unfuse_qkv_projections(self)
        if self.original_attn_processors is not None:
            self.set_attn_processor(self.original_attn_processors)
            self.original_attn_processors = None

    # -- PEFT -----------------------------------------------------------------------------------

    def add_adapter(self, adapter_config, adapter_name: str = "default") -> None:
        """``ModelMixin.add_adapter``, with LoRA on an upsampling conv made to upsample as the conv does.

        Args:
            adapter_config: A ``peft.LoraConfig``; ``target_modules`` takes diffusers' module names.
            adapter_name: The adapter's name.
        """
        super().add_adapter(adapter_config, adapter_name)
        self._adapt_upsample_lora()

    def load_lora_adapter(
        self, pretrained_model_name_or_path_or_dict, prefix="transformer", hotswap: bool = False, **kwargs
    ):
        """``ModelMixin.load_lora_adapter``, with LoRA on an upsampling conv made to upsample as the conv does.

        Args:
            pretrained_model_name_or_path_or_dict: An adapter file, folder, Hub repo or state dict.
            prefix: The prefix of this model's keys in the file.
            hotswap: Replace the weights of a loaded adapter of the same name in place.
            **kwargs: ``load_lora_adapter``'s other keywords (``adapter_name``, Hub options ...).
        """
        result = super().load_lora_adapter(
            pretrained_model_name_or_path_or_dict, prefix=prefix, hotswap=hotswap, **kwargs
        )
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
                    raise UserError(f"DoRA is not supported on the upsampling conv {name}: "
                                     "leave it out of target_modules")
                if type(conv) is NearestUpsampleConv2d:
                    plain = torch.nn.Conv2d(
                        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, groups=conv.groups,
                        bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype,
                    )
                    plain.load_state_dict(conv.state_dict())
                    plain.requires_grad_(conv.weight.requires_grad)
                    layer.lora_B[adapter] = plain

    # -- encode ---------------------------------------------------------------------------------

    def _check_dtype(self, x: torch.Tensor, what: str) -> None:
        if x.dtype != self.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"{what} is {x.dtype} but the VAE computes in {self.dtype}: convert it with .to({self.dtype}) "
                "(or the VAE with .to(dtype))"
            )

    def _encode(self, x: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        if tiled is None:
            tiled = self.use_tiling and max(x.shape[-2:]) > self.tiling.tile_size
        moments = tiling.tiled_encode(self.encoder, x, self.tiling) if tiled else self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _encoding(self, x: torch.Tensor, return_dict: bool, tiled: bool | None = None):
        check_input(x, self.config.in_channels, self.downsampling_factor, "image")
        self._check_dtype(x, "image")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(one, tiled) for one in x.split(1)])
        else:
            moments = self._encode(x, tiled)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        """Images → the latent distribution.

        Args:
            x: Images in [-1, 1], shape (batch, in_channels, height, width), height and width multiples of the
                downsampling factor, in the VAE's dtype.
            return_dict: Return an ``AutoencoderKLOutput`` rather than a tuple.
        """
        return self._encoding(x, return_dict)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput:
        """``encode`` computed tile by tile whatever the size: the same result, to float rounding.

        Args:
            x: As ``encode`` takes it.
            return_dict: As ``encode`` takes it.
        """
        return self._encoding(x, return_dict, tiled=True)

    # -- decode ---------------------------------------------------------------------------------

    def _decode(self, z: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        if tiled is None:
            tiled = self.use_tiling and max(z.shape[-2:]) * self.downsampling_factor > self.tiling.tile_size
        return tiling.tiled_decode(self.decoder, z, self.tiling) if tiled else self.decoder(z)

    def _decoding(self, z: torch.Tensor, return_dict: bool, tiled: bool | None = None):
        check_input(z, self.config.latent_channels, 1, "latents")
        self._check_dtype(z, "latents")
        if self.use_slicing and z.shape[0] > 1:
            sample = torch.cat([self._decode(one, tiled) for one in z.split(1)])
        else:
            sample = self._decode(z, tiled)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    @apply_forward_hook
    def decode(
        self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Latents → images in [-1, 1].

        Args:
            z: Latents, shape (batch, latent_channels, height, width), unscaled: divide a pipeline's latents by
                ``scaling_factor`` first.
            return_dict: Return a ``DecoderOutput`` rather than a tuple.
            generator: Accepted as ``AutoencoderKL`` does; decoding is deterministic.
        """
        return self._decoding(z, return_dict)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """``decode`` computed tile by tile whatever the size: the same result, to float rounding.

        Args:
            z: As ``decode`` takes it.
            return_dict: As ``decode`` takes it.
        """
        return self._decoding(z, return_dict, tiled=True)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode and decode: the reconstruction.

        Args:
            sample: Images, as ``encode`` takes them.
            sample_posterior: Decode a sample of the latent distribution rather than its mode.
            generator: The random generator of that sample.
            return_dict: Return a ``DecoderOutput`` rather than a tuple.
        """
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)


# Pipelines name a component in model_index.json by its class's module, and diffusers finds that module among the
# modules already imported (and, in it, ModelMixin, to know how to load the class). The name recorded is the class's
# public path, where it lived up to 0.2 and where sd_custom_vae/autoencoder_kl.py keeps it: saved pipelines stay
# loadable whatever this package's layout.
CustomAutoencoderKL.__module__ = "sd_custom_vae.autoencoder_kl"
sys.modules.setdefault(CustomAutoencoderKL.__module__, sys.modules[__name__])
