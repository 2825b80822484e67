"""The images a command works on: a run's training images and fixed validation crops (``load_image_data``),
or every readable image of a source for evaluation, calibration and the float16 fix (``read_images``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..base.errors import UserError
from .builtin import builtin_held_out
from .crops import evaluation_crops
from .image_file import LoadReport, at_least, prepare_images
from .opener import open_source
from .sources import DataOptions, MapSource, StreamSource, take

# Crops may be upscaled from images somewhat smaller than them (with a warning); beyond this factor
# for every image, a resolution is a mistake (4096-px crops of 64-px photos cost gigabytes for nothing).
MAX_UPSCALE = 2
# validation crops come from at most this many held-out images (a big dataset holds out many more)
MAX_VALIDATION_IMAGES = 32


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
        raise UserError(f"{self.source.description}: none of the images could be read")


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
    """The images `data` names (see ``opener.open_source``), split into training images and the held-out
    images whose fixed crops (`eval_resolution` pixels, default `resolution`) validate the run."""
    eval_resolution = eval_resolution or resolution
    report = LoadReport()
    source = open_source(data, options)
    name = data or "the built-in photos"
    if isinstance(source, StreamSource):
        held_out = source.held_out(MAX_VALIDATION_IMAGES, val_fraction)
        if not held_out and not take(source, 1):
            raise UserError(f"{name}: holds no readable images (each sample needs a jpg, jpeg, png or webp entry, "
                             "or name the one with --image-column)")
        if not held_out:
            raise UserError(f"{name}: no held-out image found for validation; raise --val-fraction")
        val = prepare_images(held_out, max(resolution, eval_resolution), report)
        return ImageData(source, evaluation_crops(val, eval_resolution, eval_crops_per_image), source.description,
                         report, val_fraction)

    train_indices, held_out = source.split(val_fraction)
    if source.cache is not None:  # small enough to hold decoded: load it all now, check it, weight by size
        train = prepare_images((source.image(i) for i in train_indices), resolution, report)
        largest = report.largest_side
    else:
        train, largest = SourceImages(source, train_indices, resolution), None
    val = prepare_images((source.image(i) for i in held_out[:MAX_VALIDATION_IMAGES]),
                         max(resolution, eval_resolution), report)
    if not train:
        raise UserError(f"{name}: none of the {len(train_indices)} training files could be read as an image "
                         f"({report.skipped} unreadable file(s) skipped in all)")
    if largest is not None:
        check_upscale(resolution, largest, f"training image in {name}")
    if not val:  # every held-out file was unreadable: hold one readable training image out instead
        if not isinstance(train, list) or len(train) < 2:
            raise UserError(f"{name}: need at least two readable images (one to train on, one to validate)")
        val = [at_least(train.pop(), eval_resolution)]
    report.warn(name, resolution)
    return ImageData(train, evaluation_crops(val, eval_resolution, eval_crops_per_image), source.description, report,
                     val_fraction, largest)


def upscales_too_far(resolution: int, largest_side: int) -> bool:
    """Whether crops of `resolution` px are more than ``MAX_UPSCALE`` times the largest image (its shorter side
    `largest_side`): every crop would be a blown-up copy."""
    return resolution > MAX_UPSCALE * largest_side


def check_upscale(resolution: int, largest_side: int, what: str) -> None:
    """Refuse crops that upscale too far (``upscales_too_far``); `what` names the images in the message."""
    if upscales_too_far(resolution, largest_side):
        raise UserError(
            f"--resolution {resolution} is more than {MAX_UPSCALE}× the largest {what} (shorter side {largest_side} "
            f"px): every crop would be a blown-up copy, costing memory for nothing; choose a resolution up to about "
            f"{largest_side}"
        )


def read_images(
    data: str | Path | None,
    resolution: int,
    options: DataOptions = DataOptions(),
    limit: int | None = None,
    stream_limit: int | None = None,
) -> tuple[Sequence[Image.Image], str]:
    """(every readable image `data` names, or its first `limit`; its description), each at least `resolution` px.

    None means the built-in photos, all of them; a stream gives at most `stream_limit`. A source too large to hold
    decoded is decoded on access. Images smaller than `resolution` are upscaled with a warning, and refused beyond
    ``MAX_UPSCALE`` (``check_upscale``); unreadable files are skipped with a warning.
    """
    source = open_source(data, options)
    name = data or "the built-in photos"
    if isinstance(source, StreamSource) and limit is None:
        limit = stream_limit
    if isinstance(source, MapSource) and source.cache is None and limit is None:
        return SourceImages(source, list(range(len(source))), resolution), source.description
    report = LoadReport()
    images = prepare_images(take(source, limit, keep_unreadable=True), resolution, report)
    if not images:
        raise UserError(f"{name}: no readable images ({report.skipped} file(s) could not be read as images)")
    check_upscale(resolution, report.largest_side, f"image in {name}")
    report.warn(name, resolution)
    return images, f"{source.description}: {len(images)} images"


def held_out_images(resolution: int) -> tuple[list[Image.Image], str]:
    """The built-in photos training holds out (what ``eval`` measures by default), at least `resolution` px."""
    return prepare_images(builtin_held_out(), resolution), "built-in validation photos"
