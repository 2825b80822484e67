"""Crops as training and evaluation see them: random augmented crops for training, fixed ones for evaluation.

Images are RGB tensors in [-1, 1], as Stable Diffusion's VAE expects. Training draws random crops (flipped,
and if asked rescaled or hue-turned: ``Augmentation``); every draw is a pure function of (seed, sample number),
so a resumed run sees exactly the crops an uninterrupted one would have, on any number of processes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from ..base.errors import UserError
from .colour import rotate_hue
from .image_file import at_least, to_tensor
from .sources import StreamSource, bucket

# How evaluation images become crops: fixed crops of every image, or the sd-vae-ft-mse model card's protocol
# (shorter side resized to the resolution, then the centre crop), which published rFID/PSNR tables use.
PROTOCOLS = ("crops", "sd-vae-card")


@dataclass(frozen=True)
class Augmentation:
    """What a training crop may show besides the image as it is."""

    flip: bool = True  # a mirror image, half the time
    min_scale: float = 1.0  # the image shrunk by a random factor down to this: more of it in a crop
    hue_rotation: float = 0.0  # this share of crops with the hue turned by a random angle: colours the photos lack


class RandomCrops(torch.utils.data.Dataset):
    """Sample `k` is a random crop, augmented, drawn with a generator seeded by (seed, k).

    Given a list of images, larger photos are drawn more often (weight ∝ sqrt(area)): they hold more
    distinct crops. A lazily decoded source (``SourceImages``) is drawn from uniformly.
    """

    def __init__(self, images: Sequence[Image.Image], resolution: int, seed: int = 0,
                 augmentation: Augmentation = Augmentation(), length: int = 2**62):
        if not len(images):
            raise UserError("no images to train on")
        self.images, self.resolution, self.seed, self.length = images, resolution, seed, length
        self.augmentation = augmentation
        if isinstance(images, list):
            weights = torch.tensor([float(im.width * im.height) ** 0.5 for im in images])
        else:
            weights = torch.ones(len(images))
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        image = self.images[int(torch.multinomial(self.weights, 1, generator=generator))]
        # images were prepared for the first phase's crops; a later phase's larger ones may need them larger
        return random_crop(at_least(image, self.resolution), self.resolution, generator, self.augmentation)


# where evaluation crops sit, as fractions of the free space: the centre first, then towards the corners
_EVAL_SPOTS = [(0.5, 0.5), (0.15, 0.15), (0.85, 0.85), (0.85, 0.15), (0.15, 0.85)]


def evaluation_spots(per_image: int) -> list[tuple[float, float]]:
    """`per_image` places for crops, as fractions of the free space: the five spots above, then an even grid
    over the whole image (enough crops for an rFID from a few photos)."""
    side = math.ceil(math.sqrt(max(per_image - len(_EVAL_SPOTS), 0)))
    grid = [((i + 0.5) / side, (j + 0.5) / side) for j in range(side) for i in range(side)]
    return (_EVAL_SPOTS + grid)[:per_image]


def evaluation_crops(images: list[Image.Image], resolution: int, per_image: int = 4) -> torch.Tensor:
    """Fixed crops for evaluation: each image's centre crop, then crops towards its corners, then a grid.

    (N, 3, resolution, resolution) in [-1, 1], the same for every run, ordered round-robin
    (every image's first crop, then every image's second, ...) so that the first few show every photo.
    A place that falls on a crop already taken (a small image) is not measured twice.
    """
    per_photo = []
    for image in images:
        width, height = image.size
        positions = [(round((width - resolution) * fx), round((height - resolution) * fy))
                     for fx, fy in evaluation_spots(per_image)]
        per_photo.append([image.crop((x, y, x + resolution, y + resolution)) for x, y in dict.fromkeys(positions)])
    crops = [to_tensor(photo[i]) for i in range(per_image) for photo in per_photo if i < len(photo)]
    return torch.stack(crops)


class CropBatches(torch.utils.data.Dataset):
    """Batch `b` of one process: crops ``(b · processes + rank) · batch_size + j``, disjoint across processes and
    batches, so a DataLoader (with workers) gives every process its own share, resumable at any batch."""

    def __init__(self, crops: RandomCrops, batch_size: int, rank: int = 0, processes: int = 1):
        self.crops, self.batch_size, self.rank, self.processes = crops, batch_size, rank, processes

    def __len__(self) -> int:
        return 2**62 // (self.batch_size * self.processes)

    def __getitem__(self, b: int) -> torch.Tensor:
        first = (b * self.processes + self.rank) * self.batch_size
        return torch.stack([self.crops[first + j] for j in range(self.batch_size)])


class StreamCrops:
    """Training crops from a stream: this process's share of it, reshuffled every epoch, held-out images skipped,
    one random crop per image drawn with a generator seeded by (seed, rank, image number)."""

    def __init__(self, source: StreamSource, resolution: int, val_fraction: float, seed: int = 0,
                 rank: int = 0, processes: int = 1, augmentation: Augmentation = Augmentation()):
        self.source, self.resolution, self.val_fraction = source, resolution, val_fraction
        self.seed, self.rank, self.processes, self.augmentation = seed, rank, processes, augmentation

    def examples(self, epochs: int | None = None) -> Iterator[tuple[int, bytes, dict]]:
        """(image number, key, raw example) of the training images in this process's share, epoch after epoch."""
        number = 0
        for epoch in itertools.count() if epochs is None else range(epochs):
            found = False
            for key, example in self.source.examples(self.rank, self.processes, self.seed, epoch):
                if bucket(key) >= self.val_fraction:
                    found = True
                    yield number, key, example
                    number += 1
            if not found:
                raise UserError(f"{self.source.description}: no training images in this process's share of the stream")

    def batches(self, batch_size: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches from batch number `start` on: the images before it are skipped undecoded."""
        examples = self.examples()
        for _ in itertools.islice(examples, start * batch_size):
            pass
        crops = []
        for number, _, example in examples:
            image = self.source.decode(example)
            if image is None:
                continue
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + number) * 1009 + self.rank)
            crops.append(random_crop(at_least(image, self.resolution), self.resolution, generator, self.augmentation))
            if len(crops) == batch_size:
                yield torch.stack(crops)
                crops = []


def random_crop(image: Image.Image, resolution: int, generator: torch.Generator, augmentation: Augmentation):
    """A `resolution`-px square of `image` at a random place, augmented. An option draws only when it is on, so
    with rescaling and hue rotation off a seed gives the crops it gave before they existed."""
    side = resolution
    if augmentation.min_scale < 1:
        scale = augmentation.min_scale + (1 - augmentation.min_scale) * float(torch.rand((), generator=generator))
        side = max(resolution, min(round(resolution / scale), image.width, image.height))
    top = int(torch.randint(0, image.height - side + 1, (1,), generator=generator))
    left = int(torch.randint(0, image.width - side + 1, (1,), generator=generator))
    box = (left, top, left + side, top + side)
    crop = image.crop(box) if side == resolution else image.resize((resolution, resolution), Image.BICUBIC, box=box)
    crop = to_tensor(crop)
    if augmentation.flip and torch.rand((), generator=generator) < 0.5:
        crop = crop.flip(-1)
    if augmentation.hue_rotation > 0 and torch.rand((), generator=generator) < augmentation.hue_rotation:
        crop = rotate_hue(crop, 2 * math.pi * float(torch.rand((), generator=generator)))
    return crop


def protocol_crops(images: list[Image.Image], protocol: str, resolution: int, per_image: int = 2) -> torch.Tensor:
    """The evaluation crops of `images` under `protocol` (see ``PROTOCOLS``)."""
    if protocol == "crops":
        return evaluation_crops(images, resolution, per_image)
    if protocol != "sd-vae-card":
        raise UserError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    crops = []
    for image in images:
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        resized = image.resize(size, Image.BICUBIC, reducing_gap=None)
        left, top = (resized.width - resolution) // 2, (resized.height - resolution) // 2
        crops.append(to_tensor(resized.crop((left, top, left + resolution, top + resolution))))
    return torch.stack(crops)
