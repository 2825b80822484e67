"""The GAN half of the LDM recipe: a PatchGAN discriminator, its optimizer, when it starts, its loss and its
update step. The VAE's loss asks it for the generator term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix, as in LDM's autoencoder loss): one real/fake logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for i in range(1, layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(channels, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
            channels = out
        blocks.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*blocks)
        for module in self.modules():  # pix2pix initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


class Adversary(nn.Module):
    """The GAN half of the LDM recipe, in one place: the PatchGAN discriminator, its optimizer, when it
    starts, its loss and its update step. The VAE's loss asks it for the generator term."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.start, self.weight = config.disc_start, config.disc_weight
        self.discriminator = PatchDiscriminator()
        # its own learning rate (LDM's: the VAE's), on the VAE's schedule (optimisation.py steps both)
        learning_rate = config.disc_learning_rate or config.learning_rate
        self.optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=learning_rate, betas=(0.5, 0.9))

    def prepare(self, accelerator) -> None:
        """Hand the discriminator and its optimizer to accelerate (devices, DDP, mixed precision)."""
        self.discriminator, self.optimizer = accelerator.prepare(self.discriminator, self.optimizer)

    def active(self, step: int) -> bool:
        return step >= self.start

    def generator_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        """What the VAE minimises to fool the discriminator. The discriminator's weights get no gradient from it
        (and, being the plain module rather than accelerate's wrapper, no gradient synchronisation either)."""
        discriminator = getattr(self.discriminator, "module", self.discriminator)
        discriminator.requires_grad_(False)
        try:
            return -discriminator(reconstruction).mean()
        finally:
            discriminator.requires_grad_(True)

    def update(self, images: torch.Tensor, reconstruction: torch.Tensor, accelerator) -> dict[str, torch.Tensor]:
        """One hinge-loss step of the discriminator on real images against (detached) reconstructions."""
        with accelerator.accumulate(self.discriminator), accelerator.autocast():
            real_logits = self.discriminator(images.detach())
            fake_logits = self.discriminator(reconstruction.detach())
            loss = hinge_discriminator_loss(real_logits, fake_logits)
            accelerator.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return {"discriminator": loss.detach(), "logits_real": real_logits.mean().detach(),
                "logits_fake": fake_logits.mean().detach()}

    def state(self, accelerator) -> tuple[dict, dict]:
        """(discriminator weights, optimizer state) for a checkpoint."""
        return accelerator.unwrap_model(self.discriminator).state_dict(), self.optimizer.state_dict()

    def load_state(self, accelerator, weights: dict, optimizer_state: dict) -> None:
        accelerator.unwrap_model(self.discriminator).load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer_state)
