"""Our VAE inside diffusers pipelines: load a pipeline around it, or swap it into a loaded one.

Checks run before anything heavy is loaded: the UNet must take this VAE's latents (a wrong
channel count is an error), and a latent scale that looks wrong for the UNet is a warning
(``LatentScaleWarning``), since images still come out, only worse.

A pipeline carrying our VAE saves like any other: ``model_index.json`` records the class by its public module,
``["sd_custom_vae.autoencoder_kl", "CustomAutoencoderKL"]``, as 0.1 and 0.2 did, so pipelines saved by any version
load. Diffusers (from 0.42) imports no module a repository names: it finds ours among the modules already
imported, so ``from sd_custom_vae import CustomAutoencoderKL`` before ``from_pretrained`` on such a folder.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from diffusers.configuration_utils import ConfigMixin
from diffusers.image_processor import VaeImageProcessor

from ..base.errors import UserError
from .autoencoder_kl import CustomAutoencoderKL
from .latent_space import DEFAULT_SCALING_FACTOR, is_calibrated
from .loading import load_vae
from .resolver import HUB_OPTIONS, locate

SCALE_TOLERANCE = 0.10  # relative difference from the pipeline's own VAE beyond which we warn


class _ComponentConfig(ConfigMixin):
    """Reads a component's config.json (locally or from the Hub) without importing its class."""

    config_name = "config.json"


class LatentScaleWarning(UserWarning):
    """The VAE's latent scale may not be what the pipeline's UNet was trained on."""


def check_compatibility(
    vae: CustomAutoencoderKL,
    unet_config: Mapping | None,
    original_vae_config: Mapping | None = None,
    pipeline_name: str = "the pipeline",
) -> None:
    """Raise ``UserError`` if the UNet cannot take `vae`'s latents; warn (``LatentScaleWarning``) if their scale
    looks wrong.

    Args:
        vae: The VAE to check.
        unet_config: The config of the pipeline's UNet; None for pipelines without one (nothing to check the
            latent channels against).
        original_vae_config: The config of the VAE the pipeline shipped with, if any: a ``scaling_factor`` far from
            its own is warned about.
        pipeline_name: The pipeline's class name, for the messages. An inpainting pipeline (``Inpaint`` in the
            name) may have a UNet that also takes the mask's and the masked image's channels.
    """
    latent_channels = vae.config.latent_channels
    if unet_config is not None:
        # Inpainting UNets also take the mask and the masked image's latents (SD-inpainting: 4 + 1 + 4).
        inpainting = "Inpaint" in pipeline_name
        accepted = {latent_channels, 2 * latent_channels + 1} if inpainting else {latent_channels}
        if unet_config["in_channels"] not in accepted:
            expected = " or ".join(str(c) for c in sorted(accepted))
            raise UserError(
                f"the VAE makes {latent_channels}-channel latents but {pipeline_name}'s UNet takes "
                f"{unet_config['in_channels']} input channels (it needs {expected}): this VAE cannot be used "
                "with this model"
            )
        if vae.config.shift_factor is not None:
            warnings.warn(
                f"the VAE has shift_factor={vae.config.shift_factor:.4g}, which UNet pipelines (SD 1.x/2.x, SDXL) "
                "never apply: the UNet will see uncentred latents. Calibrate without a shift for these pipelines.",
                LatentScaleWarning,
                stacklevel=3,
            )

    scaling_factor = vae.config.scaling_factor
    if not is_calibrated(vae.config):
        warnings.warn(
            f"the VAE's scaling_factor was never calibrated (it is the default {scaling_factor}, measured on SD's "
            "own encoder): fine for SD's VAE or one fine-tuned from it, otherwise run "
            "`sd-custom-vae calibrate VAE --data IMAGES` so that the UNet sees latents of the spread it expects",
            LatentScaleWarning,
            stacklevel=3,
        )
    if original_vae_config is not None:
        # AutoencoderKL's default applies when a config.json leaves the key out
        original = original_vae_config.get("scaling_factor", DEFAULT_SCALING_FACTOR)
        difference = abs(scaling_factor - original) / original
        if difference > SCALE_TOLERANCE:
            warnings.warn(
                f"the VAE's scaling_factor {scaling_factor:.5g} differs by {difference:.0%} from the "
                f"{original:.5g} of the VAE {pipeline_name} was trained with: the UNet will see latents of another "
                "spread than it learned, and images will suffer",
                LatentScaleWarning,
                stacklevel=3,
            )


def _vae_dtype(kwargs: dict) -> torch.dtype | None:
    """The dtype ``from_pretrained(**kwargs)`` loads a VAE in: ``dtype`` (or the deprecated ``torch_dtype``),
    which may be a per-component dict, {"unet": ..., "default": ...}."""
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if isinstance(dtype, dict):
        return dtype.get("vae", dtype.get("default"))
    return dtype


def _read_model_index(model: str | os.PathLike, hub_kwargs: dict) -> dict:
    if Path(model).exists():
        if not (Path(model) / DiffusionPipeline.config_name).is_file():
            raise FileNotFoundError(f"{model}: no {DiffusionPipeline.config_name}: not a diffusers pipeline folder")
    try:
        return DiffusionPipeline.load_config(model, **hub_kwargs)
    except (OSError, ValueError) as error:  # not found locally or on the Hub, offline, malformed id
        raise FileNotFoundError(
            f"{model}: not a local pipeline folder, and no Hub pipeline of that id could be read: {error}"
        ) from error


def _component_config(model, name: str, model_index: dict, kwargs: dict, hub_kwargs: dict):
    """The config of component `name`: of the object passed in `kwargs`, else read from the model's subfolder."""
    if kwargs.get(name) is not None:
        return kwargs[name].config
    library, _ = model_index.get(name) or (None, None)
    if library is None:
        return None
    return _ComponentConfig.load_config(model, subfolder=name, **hub_kwargs)


def _check_takes_vae(pipeline_cls, model, model_index: dict) -> None:
    if issubclass(pipeline_cls, DiffusionPipeline) and pipeline_cls is not DiffusionPipeline:
        if "vae" not in inspect.signature(pipeline_cls.__init__).parameters:
            raise UserError(f"{pipeline_cls.__name__} has no VAE component: it cannot use one")
    # DiffusionPipeline itself and the AutoPipeline classes build whatever model_index.json names
    elif (model_index.get("vae") or [None])[0] is None:
        raise UserError(f"{model}: model_index.json names no VAE, so {pipeline_cls.__name__} would build none")


def load_pipeline(
    model: str | os.PathLike,
    vae: CustomAutoencoderKL | str | os.PathLike,
    pipeline_cls: type[DiffusionPipeline] = StableDiffusionPipeline,
    **kwargs,
) -> DiffusionPipeline:
    """``pipeline_cls.from_pretrained(model, vae=vae, **kwargs)``, after checking that the VAE fits.

    The checks (``check_compatibility``) read only config files, so a bad combination fails before the pipeline's
    weights are loaded.

    Args:
        model: A pipeline folder or Hub id.
        vae: A ``CustomAutoencoderKL``, or what ``load_vae`` takes: a model folder, a checkpoint file, a Hub name
            (``ORG/NAME[@REVISION]``). A loaded VAE comes in ``dtype`` (default float32, as the other components);
            a passed model is cast only when ``dtype`` (or the older ``torch_dtype``) is given.
        pipeline_cls: The pipeline class to build, ``StableDiffusionPipeline`` by default.
        **kwargs: ``pipeline_cls.from_pretrained``'s keywords (``dtype``, ``variant``, the Hub's ``revision``,
            ``token`` ...).

    Returns:
        The pipeline, with this VAE as its ``vae``.
    """
    if isinstance(vae, (str, os.PathLike)):
        locate(vae)  # before anything is read: a missing file fails now
    hub_kwargs = {key: kwargs[key] for key in HUB_OPTIONS if key in kwargs}
    model_index = _read_model_index(model, hub_kwargs)
    _check_takes_vae(pipeline_cls, model, model_index)
    dtype = _vae_dtype(kwargs)
    if dtype is None and not isinstance(vae, CustomAutoencoderKL):
        dtype = torch.float32  # what from_pretrained loads the other components in
    vae = load_vae(vae, dtype)
    check_compatibility(
        vae,
        unet_config=_component_config(model, "unet", model_index, kwargs, hub_kwargs),
        # the pipeline's own VAE, never loaded: only its config
        original_vae_config=_component_config(model, "vae", model_index, {}, hub_kwargs),
        pipeline_name=pipeline_cls.__name__,
    )
    return pipeline_cls.from_pretrained(model, vae=vae, **kwargs)


def inject_vae(pipe: DiffusionPipeline, vae: CustomAutoencoderKL | str | os.PathLike) -> DiffusionPipeline:
    """Swap `vae` into an already-loaded pipeline, after the checks of ``check_compatibility``.

    The VAE is moved to the device and dtype of the one it replaces (with model offloading on,
    call ``pipe.enable_model_cpu_offload()`` again afterwards). A different downsampling factor
    updates ``pipe.vae_scale_factor`` and the pipeline's image processors.

    Args:
        pipe: A loaded pipeline with a ``vae`` component.
        vae: A ``CustomAutoencoderKL``, or what ``load_vae`` takes.

    Returns:
        `pipe` itself.
    """
    if "vae" not in pipe.components:
        raise UserError(f"{type(pipe).__name__} has no VAE component to replace")
    vae = load_vae(vae)
    original = pipe.vae
    unet = pipe.components.get("unet")
    check_compatibility(
        vae,
        unet_config=None if unet is None else unet.config,
        original_vae_config=None if original is None else original.config,
        pipeline_name=type(pipe).__name__,
    )
    reference = pipe if original is None else original
    if (vae.device, vae.dtype) != (reference.device, reference.dtype):
        vae.to(device=reference.device, dtype=reference.dtype)
    pipe.register_modules(vae=vae)
    _set_vae_scale_factor(pipe, vae.downsampling_factor)
    return pipe


def from_pipe(pipeline_cls: type[DiffusionPipeline], pipe: DiffusionPipeline, **kwargs) -> DiffusionPipeline:
    """``pipeline_cls.from_pipe(pipe, **kwargs)``, keeping `pipe`'s VAE wherever `pipeline_cls` can take it.

    ``CustomAutoencoderKL`` needs no help where the new pipeline's type hint names ``AutoencoderKL`` (most
    image pipelines): diffusers carries it over as the stock class. This also carries over a VAE that
    diffusers' exact-type test drops, a subclass of the stock ``AutoencoderKL`` or a pipeline with no type
    hint for ``vae``; a pipeline built for another kind of VAE (a video VAE, ``AutoencoderDC``, ...) is a
    ``UserError`` saying so, where diffusers would drop the VAE and then report it missing.

    Args:
        pipeline_cls: The pipeline class to build.
        pipe: The pipeline whose components it reuses.
        **kwargs: ``pipeline_cls.from_pipe``'s keywords: components to replace, config overrides.

    Returns:
        The new pipeline, sharing `pipe`'s components.
    """
    vae = pipe.components.get("vae")
    takes_vae = "vae" in inspect.signature(pipeline_cls.__init__).parameters
    if takes_vae and vae is not None and "vae" not in kwargs and "custom_pipeline" not in kwargs:
        # what diffusers' from_pipe reads the hint as; a parameter without one is (inspect.Parameter.empty,)
        hinted = [kind for kind in pipeline_cls._get_signature_types()["vae"] if inspect.isclass(kind)]
        accepted = tuple(kind for kind in hinted if kind is not inspect.Parameter.empty)
        if accepted and not isinstance(vae, accepted):
            names = " or ".join(kind.__name__ for kind in accepted)
            raise UserError(
                f"{pipeline_cls.__name__} takes a VAE of class {names}, and {type(pipe).__name__}'s VAE is a "
                f"{type(vae).__name__}: {pipeline_cls.__name__} cannot use it; pass it a VAE of its own "
                "kind with vae=..."
            )
        kwargs["vae"] = vae  # passed explicitly, from_pipe takes it whatever its class
    return pipeline_cls.from_pipe(pipe, **kwargs)


def _set_vae_scale_factor(pipe: DiffusionPipeline, factor: int) -> None:
    """What pipeline constructors derive from the VAE: ``vae_scale_factor`` and processors built with it."""
    if getattr(pipe, "vae_scale_factor", factor) == factor:
        return
    pipe.vae_scale_factor = factor
    processors = {name: p for name, p in vars(pipe).items() if isinstance(p, VaeImageProcessor)}
    for name, processor in processors.items():
        # from_config keeps each processor's other settings (the mask processor binarises, ...)
        setattr(pipe, name, type(processor).from_config(processor.config, vae_scale_factor=factor))
