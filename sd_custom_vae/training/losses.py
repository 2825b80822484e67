"""The training objective: reconstruction + β·KL, optionally perceptual and adversarial (the LDM recipe),
and optionally a term that makes the latents carry colour the way Stable Diffusion's do.

Every term is returned on its own so that the loop can log it; ``total`` is what is minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base.errors import UserError
from ..data import RGB_TO_YCBCR
from .adversary import Adversary
from .config import TrainConfig


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)) per sample, summed over latent elements
    (as DiagonalGaussianDistribution.kl)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over pixel values: MSE as in the course, or L1 as LDM trains its autoencoders."""
    if kind == "mse":
        return F.mse_loss(reconstruction, target)
    if kind == "l1":
        return F.l1_loss(reconstruction, target)
    raise UserError(f"unknown reconstruction loss {kind!r}; expected 'mse' or 'l1'")


def latent_colour_misfit(mean: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """How far the latent means are from holding the colour under each latent pixel linearly, as SD's latents
    do (a fixed 4×3 matrix previews them as RGB): Σ over Y, Cb, Cr of 1 − R² of the least-squares fit, on this
    batch, of each latent pixel's block mean from its latent mean. 0 when colour is a linear read-out.

    Why: a small ×8 VAE trained briefly fills its four channels with brightness detail first, and in five of
    nine runs without this term colour never fully entered them; the decoder then painted a sepia guess
    (docs/training.md, the experiment log)."""
    with torch.autocast(device_type=images.device.type, enabled=False):  # the normal equations need float32
        blocks = F.adaptive_avg_pool2d(images.float(), mean.shape[-2:])
        target = torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR.to(images.device), blocks)
        target = target.permute(0, 2, 3, 1).reshape(-1, 3)
        target = target - target.mean(0)
        latents = mean.float().permute(0, 2, 3, 1).reshape(-1, mean.shape[1])
        # standardised channels keep the normal equations well conditioned however large the latents grow
        latents = (latents - latents.mean(0)) / (latents.std(0, correction=0) + 1e-6)
        count = len(latents)
        gram = latents.T @ latents / count + 1e-5 * torch.eye(latents.shape[1], device=latents.device)
        fit = latents @ torch.linalg.solve(gram, latents.T @ target / count)
        # a batch of nearly one colour (a sky crop) has little to teach: its share is capped, not blown up
        return ((fit - target).square().mean(0) / target.var(0, correction=0).clamp_min(1e-3)).sum()


class VAELoss(nn.Module):
    def __init__(self, config: TrainConfig, perceptual: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.perceptual = perceptual
        self.adversary = Adversary(config) if config.disc_weight > 0 else None

    def adversarial_active(self, step: int) -> bool:
        return self.adversary is not None and self.adversary.active(step)

    def image_terms(
        self, images: torch.Tensor, reconstruction: torch.Tensor, step: int, last_layer: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Reconstruction, perceptual and adversarial terms; ``image_total`` is their weighted sum."""
        config = self.config
        terms = {"reconstruction": reconstruction_loss(reconstruction, images, config.reconstruction)}
        distortion = terms["reconstruction"]
        if self.perceptual is not None and config.perceptual_weight > 0:
            terms["perceptual"] = self.perceptual(reconstruction, images).mean()
            distortion = distortion + config.perceptual_weight * terms["perceptual"]
        total = distortion
        if self.adversarial_active(step):
            terms["generator"] = self.adversary.generator_loss(reconstruction)
            weight = self._adaptive_weight(distortion, terms["generator"], last_layer)
            terms["adversarial_weight"] = weight
            total = total + weight * terms["generator"]
        terms["image_total"] = total
        return terms

    def vae_terms(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The VAE objective: image terms + β·KL to N(0, I) (+ the colour term); ``total`` is what is minimised."""
        config = self.config
        terms = self.image_terms(images, reconstruction, step, last_layer)
        kl = kl_divergence(mean, logvar)
        terms["kl"] = kl.mean()
        if config.kl_reduction == "ldm":
            weighted_kl = config.beta * kl.mean() / images[0].numel()
        else:  # "sum": over the batch, as the course writes it
            weighted_kl = config.beta * kl.sum()
        terms["total"] = terms["image_total"] + weighted_kl
        if config.colour_weight > 0:
            terms["colour"] = latent_colour_misfit(mean, images)
            terms["total"] = terms["total"] + config.colour_weight * terms["colour"]
        return terms

    def _adaptive_weight(
        self, distortion: torch.Tensor, generator: torch.Tensor, last_layer: torch.Tensor | None
    ) -> torch.Tensor:
        """LDM balances the GAN term by the ratio of gradient norms at the decoder's last layer."""
        if last_layer is None or not torch.is_grad_enabled():
            return torch.tensor(self.config.disc_weight, device=generator.device)
        distortion_grad = torch.autograd.grad(distortion, last_layer, retain_graph=True)[0]
        generator_grad = torch.autograd.grad(generator, last_layer, retain_graph=True)[0]
        weight = distortion_grad.norm() / (generator_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach() * self.config.disc_weight
