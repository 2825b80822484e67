"""What a run optimises: a new VAE with a latent space of its own, or a VAE that speaks a teacher's.

A pretrained UNet only understands the latents of the VAE it was trained with. A new VAE
invents its own latent space, so inside Stable Diffusion it decodes the UNet's
latents badly however long it trains. The two teacher modes keep the teacher's latent space:

- ``decoder-finetune``: the teacher's encoder, frozen, and a decoder trained (from the teacher's
  or from random weights) to reconstruct images from its latents, as Stability's sd-vae-ft-mse was made.
- ``distill``: a (much smaller) student whose encoder learns to predict the teacher's latent
  distribution and whose decoder learns to reconstruct images from the teacher's latents, as TAESD
  does: a drop-in for the teacher in its pipelines, inheriting its scaling_factor/shift_factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base.errors import UserError
from ..evaluation.quality import teacher_agreement
from ..models import CustomAutoencoderKL, ScratchVAE, load_vae
from ..models.latent_space import inherited
from ..network import ARCHITECTURE_KEYS, LOGVAR_RANGE, reparameterize
from .config import TrainConfig
from .initialisation import start_as_resizing
from .losses import VAELoss


@dataclass
class StepOutput:
    terms: dict[str, torch.Tensor]
    reconstruction: torch.Tensor


def student_architecture(teacher: dict, width: float) -> dict:
    """The teacher's depth and latent shape at `width` times its channels (at least 16, each a multiple of twice the
    group count), one residual block per level."""
    narrow = [max(16, round(c * width)) for c in teacher["block_out_channels"]]
    # At least four channels per GroupNorm group, as SD has (128 channels in 32 groups): with one channel per
    # group GroupNorm is InstanceNorm, which erases every channel's mean, i.e. the image's overall colour.
    groups = min(teacher["norm_num_groups"], 16)
    while groups > 1 and min(narrow) < 4 * groups:
        groups //= 2
    # an even number of channels per group, so that the student can start as resizing (initialisation.py)
    channels = tuple(max(2 * groups, round(c / (2 * groups)) * 2 * groups) for c in narrow)
    return dict(
        in_channels=teacher["in_channels"], out_channels=teacher["out_channels"], block_out_channels=channels,
        layers_per_block=1, latent_channels=teacher["latent_channels"], norm_num_groups=groups,
        mid_block_add_attention=teacher["mid_block_add_attention"], use_quant_conv=teacher["use_quant_conv"],
        use_post_quant_conv=teacher["use_post_quant_conv"],
    )


class Objective:
    """What a mode trains: the network it builds, how it prepares it, the loss terms of a step, its metrics."""

    mode: str

    def __init__(self, config: TrainConfig, loss: VAELoss):
        self.config, self.loss = config, loss

    def architecture(self) -> dict:
        return dict(self.config.model)

    def prepare(self, vae: ScratchVAE) -> None:
        """Initialise or freeze parts of the freshly built model before the optimizer sees it: by default, its start
        as resizing where the config asks for it (``--init``; decoder-finetune starts from its teacher instead)."""
        if self.config.init == "resizing":
            start_as_resizing(vae)

    def terms(self, model, images: torch.Tensor, step: int, noise: torch.Generator, last_layer) -> StepOutput:
        """The loss terms of one micro-step at optimizer step `step`; `noise` draws the latent samples."""
        raise NotImplementedError

    @torch.no_grad()
    def metrics(self, vae: ScratchVAE, crops: torch.Tensor) -> dict:
        """Mode-specific validation numbers, beyond PSNR/SSIM of the model's own reconstructions."""
        return {}

    def latent_space(self) -> dict:
        """Config values the exported model must carry (empty: calibrate it on the data)."""
        return {}


class NewLatentSpace(Objective):
    """A new VAE with a latent space of its own: the course's objective, reconstruction + β·KL."""

    mode = "new"

    def terms(self, model, images: torch.Tensor, step: int, noise: torch.Generator, last_layer) -> StepOutput:
        reconstruction, mean, logvar = model(images, generator=noise)
        return StepOutput(self.loss.vae_terms(images, reconstruction, mean, logvar, step, last_layer), reconstruction)


class TeacherObjective(Objective):
    def __init__(self, config: TrainConfig, loss: VAELoss, teacher: CustomAutoencoderKL, device: torch.device):
        super().__init__(config, loss)
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.teacher_config = dict(teacher.config)
        self.shift = teacher.config.shift_factor or 0.0

    def latent_space(self) -> dict:
        return inherited(self.teacher_config)

    @torch.no_grad()
    def teacher_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.teacher.encode(images.to(self.teacher.dtype)).latent_dist
        return posterior.mean.float(), posterior.logvar.float()

    def metrics(self, vae: ScratchVAE, crops: torch.Tensor) -> dict:
        return teacher_agreement(vae, self.teacher, crops)


class DecoderFinetune(TeacherObjective):
    """The teacher's encoder, frozen; a decoder trained to reconstruct from its latent samples."""

    mode = "decoder-finetune"

    def architecture(self) -> dict:
        return {k: self.teacher_config[k] for k in ARCHITECTURE_KEYS}

    def prepare(self, vae: ScratchVAE) -> None:
        teacher_weights = self.teacher.state_dict()
        if self.config.decoder_init == "random":  # keep the fresh decoder, take only the encoder side
            teacher_weights = {k: v for k, v in teacher_weights.items()
                               if not k.startswith(("decoder.", "post_quant_conv."))}
        vae.load_state_dict(teacher_weights, strict=False)
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)

    def terms(self, model, images, step, noise, last_layer) -> StepOutput:
        # the frozen encoder is the teacher's: sampling its posterior inside the model is the teacher's latent
        reconstruction, _, _ = model(images, generator=noise)
        terms = self.loss.image_terms(images, reconstruction, step, last_layer)
        terms["total"] = terms["image_total"]
        return StepOutput(terms, reconstruction)


class Distill(TeacherObjective):
    """A student encoder regressed onto the teacher's latent distribution, a student decoder trained on its latents."""

    mode = "distill"

    def architecture(self) -> dict:
        if not self.config.model:
            return student_architecture(self.teacher_config, self.config.student_width)
        student = ScratchVAE(**self.config.model).config
        for key in ("latent_channels", "in_channels", "out_channels"):
            if student[key] != self.teacher_config[key]:
                raise UserError(f"the student's {key}={student[key]} "
                                 f"must equal the teacher's {self.teacher_config[key]}")
        if len(student["block_out_channels"]) != len(self.teacher_config["block_out_channels"]):
            raise UserError(
                f"the student has {len(student['block_out_channels'])} levels, the teacher "
                f"{len(self.teacher_config['block_out_channels'])}: their latents would differ in size"
            )
        return student

    def terms(self, model, images, step, noise, last_layer) -> StepOutput:
        teacher_mean, teacher_logvar = self.teacher_moments(images)
        teacher_latents = reparameterize(teacher_mean, teacher_logvar, noise)
        reconstruction, mean, logvar = model(images, latents=teacher_latents)
        terms = self.loss.image_terms(images, reconstruction, step, last_layer)
        # squared relative error of the means: scale-free, and exactly the reported metric squared
        terms["latent"] = ((mean - teacher_mean).square().sum()
                           / (teacher_mean - self.shift).square().sum().clamp_min(1e-12))
        # the log-variance matters too: pipelines sample the posterior (img2img's retrieve_latents)
        terms["logvar"] = (logvar - teacher_logvar.clamp(*LOGVAR_RANGE)).square().mean()
        terms["total"] = terms["image_total"] + self.config.latent_weight * (terms["latent"] + 0.01 * terms["logvar"])
        return StepOutput(terms, reconstruction)


def make_objective(config: TrainConfig, loss: VAELoss, device: torch.device) -> Objective:
    """The objective of `config.mode` (one of ``MODES``, checked by ``TrainConfig.validate``)."""
    if config.mode == "new":
        if config.teacher:
            raise UserError("a teacher is only used by --mode decoder-finetune or distill")
        return NewLatentSpace(config, loss)
    if not config.teacher:
        raise UserError(f"--mode {config.mode} needs --teacher PATH (any VAE checkpoint or folder)")
    teacher = load_vae(config.teacher, dtype=torch.float32, subfolder=config.teacher_subfolder)
    return (DecoderFinetune if config.mode == "decoder-finetune" else Distill)(config, loss, teacher, device)
