"""How ``CustomAutoencoderKL`` is read from and written to every other form of a VAE.

``from_pretrained`` with diffusers' keyword arguments, on folders of ours and of a stock ``AutoencoderKL``
(renamed on load); ``from_single_file`` on any checkpoint file, state dict or Hub file; the plain
``ScratchVAE`` and the stock ``AutoencoderKL`` holding the same weights; ``push_to_hub`` as a complete
model repository. A mixin, so that the model class itself reads as the network's interface.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Self

import torch

from ..base.errors import UserError
from ..base.files import read_json
from ..conversion import (
    CONFIG_NAME,
    DTYPES,
    OURS,
    WEIGHTS_NAME,
    VAECheckpoint,
    as_checkpoint,
    check_values,
    expected_tensors,
    key_scheme,
    load_checkpoint,
    rename_to_ours,
    shard_files,
)
from ..network.config import ARCHITECTURE_KEYS, CONFIG_KEYS, from_diffusers_config, to_diffusers_config
from . import hub_repo
from .resolver import HUB_OPTIONS, locate
from .scratch_vae import ScratchVAE


class AssumedConfigWarning(UserWarning):
    """A checkpoint did not say a config value the weights cannot tell; the usual one was assumed."""


COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # what a model can run in


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    # ModelMixin.to(dtype) logs a warning on every cast, even a no-op one; skip the no-ops.
    return model if next(model.parameters()).dtype == dtype else model.to(dtype)


def as_dtype(value) -> torch.dtype:
    """A torch dtype from what a user may pass for one: a dtype, or its name ("float16", "fp16", "torch.float16")."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        dtype = DTYPES.get(name) or getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            return dtype
    raise TypeError(f"torch_dtype {value!r} is not a dtype: pass torch.float32, torch.float16 or torch.bfloat16")


def _check_config_fits_weights(folder: Path, config: dict, variant: str | None) -> None:
    """Refuse a config.json whose network the weights beside it cannot fill, before anything is built: a config of
    two 65,536-channel levels would otherwise allocate a 150 GB model to find out. Reads the safetensors headers.
    A tensor that is merely missing is left to the load, which names it."""
    from safetensors import safe_open

    suffix = f".{variant}" if variant else ""
    single = folder / f"{WEIGHTS_NAME}{suffix}.safetensors"
    index = single.with_name(single.name + ".index.json")
    files = [single] if single.is_file() else shard_files(index) if index.is_file() else []
    if not files:
        return
    stored: dict[str, tuple[int, ...]] = {}
    try:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                stored.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    except Exception:  # noqa: BLE001 - an unreadable file is reported, with its name, when it is loaded
        return
    shapes = expected_tensors(from_diffusers_config(config))
    expected, held = sum(map(math.prod, shapes.values())), sum(map(math.prod, stored.values()))
    differing = [key for key in shapes if key in stored and shapes[key] != stored[key]]
    # Names in another scheme share no key with ours; then only the sizes can be compared.
    if differing or (not stored.keys() & shapes.keys() and expected > held):
        example = f" ('{differing[0]}' is {list(stored[differing[0]])} in the weights)" if differing else ""
        raise UserError(
            f"{folder / CONFIG_NAME} describes a VAE of {expected:,} parameters but its weights hold "
            f"{held:,}{example}: the config and the weights are not of one model"
        )


class CheckpointIO:
    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> Self:
        """``ModelMixin.from_pretrained`` with all its keyword arguments, on a folder or Hub repo of ours or of a
        stock ``AutoencoderKL`` (its weights are renamed on load, see ``_load_pretrained_model``).

        A folder of another kind of model, or one that leaves any weight out, is an error naming what is wrong:
        diffusers would otherwise return a model with those weights left on the meta device.

        Args:
            pretrained_model_name_or_path: A model folder or Hub repo id.
            **kwargs: ``ModelMixin.from_pretrained``'s keywords (``subfolder``, ``torch_dtype``, ``variant``,
                Hub options ...).
        """
        local = Path(pretrained_model_name_or_path, kwargs.get("subfolder") or "")
        if local.is_dir() and (local / CONFIG_NAME).is_file():
            read_json(local / CONFIG_NAME)  # a malformed file is named, not a diffusers traceback
        config = cls.load_config(
            pretrained_model_name_or_path, **{k: kwargs[k] for k in ("subfolder", *HUB_OPTIONS) if k in kwargs}
        )
        class_name = config.get("_class_name")
        if class_name not in (None, cls.__name__, "AutoencoderKL"):
            raise UserError(
                f"{pretrained_model_name_or_path}: holds a {class_name}, not a VAE "
                f"(AutoencoderKL or {cls.__name__}); for a pipeline folder pass subfolder='vae'"
            )
        if local.is_dir():
            _check_config_fits_weights(local, config, kwargs.get("variant"))
        output_loading_info = kwargs.get("output_loading_info", False)
        result = super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "output_loading_info": True})
        model, info = result
        missing = sorted(info["missing_keys"])
        if missing:
            raise UserError(
                f"{pretrained_model_name_or_path}: {len(missing)} weight(s) missing from the checkpoint: "
                f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; the file is incomplete "
                "or for another model"
            )
        return (model, info) if output_loading_info else model

    @classmethod
    def _load_pretrained_model(
        cls, model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
    ):
        """Where ``from_pretrained`` reads the checkpoint: its values are checked (floating point, finite), and one in
        other names (LDM, the course's, sd-custom-vae 0.2's) is renamed to ours. Everything else (dtype, device map,
        missing-key report) is diffusers'."""
        if state_dict is None:  # sharded: read every shard here (a VAE is small enough to hold at once)
            from diffusers.models.model_loading_utils import load_state_dict

            state_dict = {}
            for shard in resolved_model_file:
                state_dict.update(load_state_dict(shard))
        check_values(state_dict, str(pretrained_model_name_or_path))
        if key_scheme(loaded_keys) != OURS.name:
            state_dict = rename_to_ours(state_dict)
            loaded_keys = list(state_dict)
        return super()._load_pretrained_model(
            model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: VAECheckpoint, **config_overrides) -> Self:
        """Build from a validated checkpoint, in the dtype of its weights.

        Args:
            checkpoint: What ``conversion.load_checkpoint`` or ``as_checkpoint`` returned.
            **config_overrides: Config values to use instead of the checkpoint's (``scaling_factor`` ...).
        """
        config = {k: v for k, v in {**checkpoint.config, **config_overrides}.items() if k in CONFIG_KEYS}
        model = cls(**config)
        model.load_state_dict(checkpoint.state_dict)
        dtypes = {t.dtype for t in checkpoint.state_dict.values() if t.is_floating_point()}
        # the weights' own dtype, if one a model computes in (float8 weights load into float32)
        return _cast(model, dtypes.pop()) if len(dtypes) == 1 and dtypes <= set(COMPUTE_DTYPES) else model

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path_or_dict: str | os.PathLike | dict,
        config: dict | str | os.PathLike | None = None,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs,
    ) -> Self:
        """Load a single checkpoint: an LDM/A1111/ComfyUI VAE file, a whole SD checkpoint, a file of ours
        (``.safetensors``, or a pickle read with ``weights_only=True``), a diffusers folder, a state dict,
        or a file on the Hub (``https://huggingface.co/ORG/NAME/blob/main/FILE`` or ``ORG/NAME/FILE``).

        The architecture is read from the tensor shapes.

        Args:
            pretrained_model_link_or_path_or_dict: The file, folder, Hub file or state dict.
            config: What the weights cannot tell: a dict of config values, or (as in diffusers) a model folder or
                Hub repo id whose ``config.json`` is used.
            subfolder: The folder of that ``config.json`` inside `config`.
            torch_dtype: The dtype to load in (default: the weights').
            **kwargs: Config overrides (``scaling_factor=0.13025`` for an SDXL VAE, ``norm_num_groups`` ...) and
                Hub options (``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``force_download``).
        """
        torch_dtype = None if torch_dtype is None else as_dtype(torch_dtype)
        hub_options = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
        if isinstance(config, (str, os.PathLike)):
            config = dict(cls.load_config(config, subfolder=subfolder, **hub_options))
        config = from_diffusers_config(config) if config else {}
        overrides = {k: v for k, v in kwargs.items() if k in CONFIG_KEYS}
        unknown = sorted(set(kwargs) - set(overrides))
        if unknown:
            raise TypeError(f"from_single_file got unexpected keyword argument(s): {', '.join(unknown)}")
        source = pretrained_model_link_or_path_or_dict
        if isinstance(source, dict):
            checkpoint = as_checkpoint(source, {**config, **overrides})
        else:
            path = locate(source, **hub_options)
            checkpoint = load_checkpoint(path, {**config, **overrides})
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
    def from_scratch_checkpoint(cls, path: str | os.PathLike, **overrides) -> Self:
        """Load a ``ScratchVAE`` state dict saved by training (our names, or those of sd-custom-vae 0.2),
        refusing any other scheme.

        Args:
            path: The file.
            **overrides: Config values the file does not hold (``scaling_factor`` ...).
        """
        checkpoint = load_checkpoint(path)
        if checkpoint.scheme not in (OURS.name, "sd-custom-vae-0.2"):
            raise UserError(
                f"{path}: holds {checkpoint.scheme} key names, not a ScratchVAE state dict; use from_single_file"
            )
        return cls.from_checkpoint(checkpoint, **overrides)

    # -- other faces of the same weights --------------------------------------------------------

    @classmethod
    def from_scratch_vae(cls, vae: ScratchVAE, **latent_space_config) -> Self:
        """Wrap a trained ``ScratchVAE`` (same weights, shared by copy) for use in a pipeline.

        Args:
            vae: The model.
            **latent_space_config: ``scaling_factor``, ``shift_factor`` ..., as the constructor takes them.
        """
        model = cls(**vae.config, **latent_space_config)
        model.load_state_dict(vae.state_dict())
        return _cast(model, next(vae.parameters()).dtype)

    def to_scratch_vae(self) -> ScratchVAE:
        architecture = {k: self.config[k] for k in ARCHITECTURE_KEYS}
        vae = ScratchVAE(**architecture)
        vae.load_state_dict(self.state_dict())
        return vae.to(self.dtype)

    @classmethod
    def from_autoencoder_kl(cls, model_or_path, **kwargs) -> Self:
        """Same weights as a stock ``diffusers.AutoencoderKL``.

        Args:
            model_or_path: The model, a local folder or a Hub id.
            **kwargs: ``from_pretrained``'s keywords, for a folder or Hub id.
        """
        if isinstance(model_or_path, (str, os.PathLike)):
            return cls.from_pretrained(model_or_path, **kwargs)
        config = from_diffusers_config(dict(model_or_path.config))
        checkpoint = as_checkpoint(model_or_path.state_dict(), config, source=type(model_or_path).__name__)
        return cls.from_checkpoint(checkpoint)

    def to_autoencoder_kl(self):
        """A stock ``diffusers.AutoencoderKL`` with identical weights, on the same device and dtype."""
        from diffusers import AutoencoderKL

        config = to_diffusers_config(dict(self.config))
        model = AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model.load_state_dict(self.state_dict())  # the same names
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
        and/or an LDM single file, and a model card.

        Args:
            repo_id: ``ORG/NAME``; created if it does not exist.
            commit_message: The commit's message.
            private: Create the repository private.
            token: The Hub token (default: the one logged in); never printed or written.
            create_pr: Open a pull request rather than commit to the main branch.
            safe_serialization: Accepted as ``ModelMixin`` does; only True (safetensors) is written.
            variant: Accepted as ``ModelMixin`` does; only None.
            subfolder: Accepted as ``ModelMixin`` does; only None.
            format: ``"diffusers"``, ``"ldm"`` or ``"both"``.
            metrics: A run's ``metrics.json``, for the model card.
            reconstructions: An image of reconstructions, for the model card.

        Returns:
            The commit's URL.
        """
        if not safe_serialization or variant is not None or subfolder is not None:
            raise UserError("push_to_hub writes one safetensors repo at its root: no pickle, variant or subfolder")
        result = hub_repo.push_vae(
            self, repo_id, format=format, private=private, token=token, commit_message=commit_message,
            create_pr=create_pr, metrics=metrics, reconstructions=reconstructions,
        )
        return result.commit_url
