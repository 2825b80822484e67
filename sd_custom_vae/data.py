"""Images as training and evaluation see them: tensors, random crops, the validation crops of a run.

Images are RGB tensors in [-1, 1], as Stable Diffusion's VAE expects. Training draws random
crops (flipped, and if asked rescaled or hue-turned: ``Augmentation``); every draw is a pure function of
(seed, sample number), so a resumed run sees exactly the crops an uninterrupted one would have, on any
number of processes. Where the images come from (a folder, the built-in photos, a 🤗 dataset, WebDataset
shards) is ``image_sources``.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .colour import rotate_hue
from .image_sources import (  # noqa: F401 (the names this module has always offered)
    BUILTIN,
    IMAGE_SUFFIXES,
    DataOptions,
    MapSource,
    StreamSource,
    as_rgb,
    bucket,
    builtin_photos,
    find_images,
    open_source,
    read_image,
)

# Crops may be upscaled from images somewhat smaller than them (with a warning); beyond this factor
# for every image, a resolution is a mistake (4096-px crops of 64-px photos cost gigabytes for nothing).
MAX_UPSCALE = 2
# validation crops come from at most this many held-out images (a big dataset holds out many more)
MAX_VALIDATION_IMAGES = 32


def split_paths(paths: list[Path], root: Path, val_fraction: float = 0.1) -> tuple[list[Path], list[Path]]:
    """(train, held out) by a hash of each relative path: adding images never moves old ones (as ``MapSource.split``)."""
    source = MapSource("", len(paths), lambda i: None, lambda i: os.fsencode(paths[i].relative_to(root)))
    train, held_out = source.split(val_fraction)
    return [paths[i] for i in train], [paths[i] for i in sorted(held_out)]


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0  # unreadable or not an image
    upscaled: int = 0  # smaller than the crop
    largest_side: int = 0  # the largest shorter side among the images read


def at_least(image: Image.Image, side: int) -> Image.Image:
    """Upscale (bicubic) so that the shorter side is at least `side`."""
    short = min(image.size)
    if short >= side:
        return image
    scale = side / short
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.BICUBIC)


def load_images(paths: list[Path], resolution: int, report: LoadReport | None = None) -> list[Image.Image]:
    """Decode to RGB, skipping unreadable files and upscaling images smaller than the crop."""
    return prepare_images((read_image(path) for path in paths), resolution, report)


def prepare_images(images, resolution: int, report: LoadReport | None) -> list[Image.Image]:
    report = report if report is not None else LoadReport()
    prepared = []
    for image in images:
        if image is None:
            report.skipped += 1
            continue
        report.largest_side = max(report.largest_side, min(image.size))
        if min(image.size) < resolution:
            image = at_least(image, resolution)
            report.upscaled += 1
        prepared.append(image)
        report.loaded += 1
    return prepared


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → (3, H, W) float in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] → PIL RGB."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


class SourceImages(Sequence):
    """Images `indices` of a random-access source, decoded on access (unreadable ones replaced by the next
    readable one) and upscaled to at least `side` pixels."""

    def __init__(self, source: MapSource, indices: list[int], side: int):
        self.source, self.indices, self.side = source, indices, side

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> Image.Image:
        for offset in range(len(self.indices)):
            image = self.source.image(self.indices[(position + offset) % len(self.indices)])
            if image is not None:
                return at_least(image, self.side)
        raise ValueError(f"{self.source.description}: none of the images could be read")


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
            raise ValueError("no images to train on")
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


def evaluation_crops(images: list[Image.Image], resolution: int, per_image: int = 4) -> torch.Tensor:
    """Fixed crops for evaluation: each image's centre crop, then crops towards its corners.

    (N, 3, resolution, resolution) in [-1, 1], the same for every run, ordered round-robin
    (every image's first crop, then every image's second, ...) so that the first few show every photo.
    """
    per_photo = []
    for image in images:
        width, height = image.size
        positions = [(round((width - resolution) * fx), round((height - resolution) * fy)) for fx, fy in _EVAL_SPOTS[:per_image]]
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
                raise ValueError(f"{self.source.description}: no training images in this process's share of the stream")

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


@dataclass
class ImageData:
    """A run's training images (random access or a stream) and its fixed validation crops."""

    train: Sequence[Image.Image] | StreamSource
    val_crops: torch.Tensor
    description: str
    report: LoadReport
    val_fraction: float = 0.1
    largest_side: int | None = None  # the largest shorter side among the training images, where they were all read

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, StreamSource)


def load_image_data(
    data: str | Path | None,
    resolution: int,
    val_fraction: float = 0.1,
    eval_crops_per_image: int = 4,
    eval_resolution: int | None = None,
    options: DataOptions = DataOptions(),
) -> ImageData:
    """The images `data` names (see ``image_sources.open_source``), split into training images and the held-out
    images whose fixed crops (`eval_resolution` pixels, default `resolution`) validate the run."""
    eval_resolution = eval_resolution or resolution
    report = LoadReport()
    source = open_source(data, options)
    name = data or "the built-in photos"
    if isinstance(source, StreamSource):
        held_out = source.held_out(MAX_VALIDATION_IMAGES, val_fraction)
        if not held_out:
            raise ValueError(f"{name}: no held-out image found for validation; raise --val-fraction")
        val = prepare_images(held_out, max(resolution, eval_resolution), report)
        return ImageData(source, evaluation_crops(val, eval_resolution, eval_crops_per_image), source.description,
                         report, val_fraction)

    train_indices, held_out = source.split(val_fraction)
    if source.cache is not None:  # small enough to hold decoded: load it all now, check it, weight by size
        train = prepare_images((source.image(i) for i in train_indices), resolution, report)
        largest = report.largest_side
    else:
        train, largest = SourceImages(source, train_indices, resolution), None
    val = prepare_images((source.image(i) for i in held_out[:MAX_VALIDATION_IMAGES]), max(resolution, eval_resolution), report)
    if not train:
        raise ValueError(f"{name}: none of the {len(train_indices)} training files could be read as an image "
                         f"({report.skipped} unreadable file(s) skipped in all)")
    if largest is not None and resolution > MAX_UPSCALE * largest:
        raise ValueError(
            f"--resolution {resolution} is more than {MAX_UPSCALE}× the largest training image in {name} (shorter "
            f"side {largest} px): every crop would be a blown-up copy, costing memory for nothing; "
            f"choose a resolution up to about {largest}"
        )
    if not val:  # every held-out file was unreadable: hold one readable training image out instead
        if not isinstance(train, list) or len(train) < 2:
            raise ValueError(f"{name}: need at least two readable images (one to train on, one to validate)")
        val = [at_least(train.pop(), eval_resolution)]
    if report.skipped:
        warnings.warn(f"{name}: skipped {report.skipped} file(s) that could not be read as images", stacklevel=2)
    if report.upscaled:
        warnings.warn(f"{name}: upscaled {report.upscaled} image(s) smaller than the {resolution}px crop", stacklevel=2)
    return ImageData(train, evaluation_crops(val, eval_resolution, eval_crops_per_image), source.description, report,
                     val_fraction, largest)
