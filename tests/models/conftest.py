"""What the model tests share: a tiny VAE and an image for it."""

import pytest
import torch
from factories import tiny_vae


@pytest.fixture
def vae():
    return tiny_vae()


@pytest.fixture
def image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
