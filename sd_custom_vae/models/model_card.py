"""The README.md a pushed VAE carries: Hub metadata in YAML, then what a user needs to judge and use it."""

from __future__ import annotations

import math
import warnings

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..network import downsampling_factor
from .latent_space import is_calibrated

# metrics.json key -> (model-index metric type, name shown on the Hub)
CARD_METRICS = {
    "rfid": ("rfid", "rFID"),
    "psnr": ("psnr", "PSNR (dB)"),
    "ssim": ("ssim", "SSIM"),
    "lpips": ("lpips", "LPIPS distance"),
    "st_lpips": ("st-lpips", "ST-LPIPS distance"),
    "latent_relative_error": ("latent-relative-error", "Latent relative error vs teacher"),
    "teacher_latent_psnr": ("teacher-latent-psnr", "PSNR decoding the teacher's latents (dB)"),
}
TAGS = ["stable-diffusion", "vae", "autoencoder", "sd-custom-vae"]


def _finite_metrics(metrics: dict) -> dict:
    """`metrics` without the numbers that are not finite (NaN, infinity: a run that diverged, a metric that could not
    be measured), each named in a warning: a card publishes only what was measured."""
    kept = {}
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            warnings.warn(f"metrics.json: {key} is {value}, not a measured number: left out of the model card",
                          stacklevel=3)
            continue
        kept[key] = value
    return kept


def _row(name: str, value) -> str:
    return f"| {name} | {value} |"


def _architecture(config: dict, parameters: int) -> list[str]:
    factor = downsampling_factor(config["block_out_channels"])
    rows = [
        _row("class", "`AutoencoderKL` (diffusers), `CustomAutoencoderKL` (sd-custom-vae)"),
        _row("block_out_channels", list(config["block_out_channels"])),
        _row("layers_per_block", config["layers_per_block"]),
        _row("latent channels", config["latent_channels"]),
        _row("downsampling factor", f"{factor} (a {8 * factor}×{8 * factor} image gives an 8×8 latent)"),
        _row("mid-block attention", config.get("mid_block_add_attention", True)),
        _row("parameters", f"{parameters:,}"),
        _row("scaling_factor", config["scaling_factor"]),
    ]
    if config.get("shift_factor") is not None:
        rows.append(_row("shift_factor", config["shift_factor"]))
    return ["| | |", "|---|---|", *rows]


def _training(metrics: dict) -> list[str]:
    known = [
        ("mode", metrics.get("mode")),
        ("teacher", metrics.get("teacher")),
        ("data", metrics.get("data")),
        ("steps", metrics.get("steps")),
        ("resolution", metrics.get("resolution")),
        ("preset", metrics.get("preset")),
        ("wall time", f"{metrics['wall_time_s'] / 60:.1f} min" if "wall_time_s" in metrics else None),
    ]
    rows = [_row(name, value) for name, value in known if value is not None]
    return ["| | |", "|---|---|", *rows] if rows else []


def _usage(repo_id: str, has_diffusers: bool, ldm_file: str | None, scaling_factor: float) -> str:
    if has_diffusers:
        load = (
            "from diffusers import AutoencoderKL, StableDiffusionPipeline\n\n"
            f'vae = AutoencoderKL.from_pretrained("{repo_id}")\n'
            f'# or, with sd-custom-vae installed: CustomAutoencoderKL.from_pretrained("{repo_id}")\n'
        )
    else:
        load = (
            "from diffusers import StableDiffusionPipeline\n"
            "from huggingface_hub import hf_hub_download\n"
            "from sd_custom_vae import CustomAutoencoderKL\n\n"
            f'vae = CustomAutoencoderKL.from_single_file(hf_hub_download("{repo_id}", "{ldm_file}"),'
            f" scaling_factor={scaling_factor})\n"
        )
    snippet = (
        "```python\n"
        f"{load}"
        'pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5", vae=vae)\n'
        'image = pipe("a photo of a dog").images[0]\n'
        "```"
    )
    if ldm_file:
        snippet += (
            f"\n\nFor AUTOMATIC1111 / ComfyUI: download `{ldm_file}` (original LDM key names) into your VAE folder."
        )
    return snippet


def build_model_card(
    repo_id: str,
    config: dict,
    parameters: int,
    metrics: dict | None = None,
    *,
    has_diffusers: bool = True,
    ldm_file: str | None = None,
    reconstructions: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """A card for `repo_id`. `metrics` is a run's ``metrics.json`` (validation numbers and what the run did);
    `reconstructions` the repo path of the originals-vs-reconstructions grid."""
    metrics = _finite_metrics(metrics or {})
    name = repo_id.split("/")[-1]
    dataset = metrics.get("data") or "held-out images"
    eval_results = [
        EvalResult(
            task_type="image-to-image",
            task_name="Image reconstruction",
            dataset_type="imagefolder",
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=metrics[key],
        )
        for key, (metric_type, metric_name) in CARD_METRICS.items()
        if isinstance(metrics.get(key), (int, float))
    ]
    data = ModelCardData(
        library_name="diffusers",
        license=license,
        tags=TAGS,
        model_name=name,
        eval_results=eval_results or None,
    )
    sections = [
        f"# {name}",
        "A KL-regularised Stable Diffusion VAE trained with "
        "[sd-custom-vae](https://pypi.org/project/sd-custom-vae/). It loads as a stock diffusers "
        "`AutoencoderKL` and drops into Stable Diffusion pipelines as `vae=`.",
        "## Architecture",
        "\n".join(_architecture(config, parameters)),
    ]
    training = _training(metrics)
    if training:
        sections += ["## Training", "\n".join(training)]
    if eval_results or reconstructions:
        sections.append("## Validation")
        if eval_results:
            table = ["| metric | value |", "|---|---|"]
            table += [_row(r.metric_name, f"{r.metric_value:.4g}") for r in eval_results]
            sections.append("\n".join(table))
        if reconstructions:
            sections.append(f"![originals (top) and reconstructions (bottom)]({reconstructions})")
    if not is_calibrated(config) and metrics.get("mode") in (None, "new", "scratch"):  # "scratch": runs before 0.3
        sections.append(
            "> `scaling_factor` is SD's default, not measured on this VAE's latents: run "
            "`sd-custom-vae calibrate` before using it with a diffusion model."
        )
    sections += ["## Usage", _usage(repo_id, has_diffusers, ldm_file, config["scaling_factor"])]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
