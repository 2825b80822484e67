"""One image, as every command reads it: a file or bytes decoded to 8-bit RGB, and tensors in [-1, 1].

``read_image`` (and ``decode_value`` for what 🤗 datasets hands over) is the one reader: EXIF rotation
applied, 16-bit and float greyscale scaled rather than clipped, transparency and palettes resolved, and a
decompression bomb refused like any unreadable file (None: the caller counts and reports it).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def as_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as the photo is meant to be seen: EXIF rotation applied, 16-bit greyscale scaled to 8 bits
    (Pillow's own conversion would clip it to white), transparency and palettes resolved."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit greyscale (PNG, TIFF)
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":  # floating-point TIFF: taken as [0, 1]
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def read_image(source: str | Path | bytes, name: str | None = None) -> Image.Image | None:
    """The image in a file (or in `bytes`) as 8-bit RGB, or None if it is not a readable image (or a bomb).
    Pillow's warnings about it (corrupt EXIF, ...) are passed on naming the file (or `name`)."""
    in_memory = isinstance(source, (bytes, bytearray))
    with _naming_warnings(name or ("an image" if in_memory else str(source))):
        try:
            with Image.open(io.BytesIO(source) if in_memory else source) as image:
                image.load()
                return as_rgb(image)
        except _UNREADABLE:
            return None


@contextlib.contextmanager
def _naming_warnings(name: str):
    """Pillow warns about a damaged photo ("Corrupt EXIF data", "Tag data larger than file") without saying
    which: in a folder of thousands, the user could not find it. Re-issued with `name` in front."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        warnings.warn(f"{name}: {warning.message}", warning.category, stacklevel=3)


def decode_value(value) -> Image.Image | None:
    """An image as 🤗 datasets hands it over (PIL, {"bytes", "path"}, raw bytes or a path) → 8-bit RGB, or None."""
    if isinstance(value, Image.Image):
        with _naming_warnings(getattr(value, "filename", "") or "an image of the dataset"):
            try:
                return as_rgb(value)
            except _UNREADABLE:
                return None
    if isinstance(value, dict):
        value, name = value.get("bytes") or value.get("path"), value.get("path")
    else:
        name = None
    if isinstance(value, (bytes, bytearray, str)):
        return read_image(value if not isinstance(value, str) else Path(value), name)
    return None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → (3, H, W) float in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] → PIL RGB."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def at_least(image: Image.Image, side: int) -> Image.Image:
    """Upscale (bicubic) so that the shorter side is at least `side`."""
    short = min(image.size)
    if short >= side:
        return image
    scale = side / short
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.BICUBIC)


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0  # unreadable or not an image
    upscaled: int = 0  # smaller than the crop
    largest_side: int = 0  # the largest shorter side among the images read
    smallest_side: int = 0  # the smallest shorter side among the images read

    def warn(self, name: str, resolution: int) -> None:
        """Say what became of the images of `name` (a source) that were not read as they were: the files skipped as
        unreadable and the images upscaled to `resolution` px. Points at the caller of the function calling it."""
        if self.skipped:
            warnings.warn(f"{name}: skipped {self.skipped} file(s) that could not be read as images", stacklevel=3)
        if self.upscaled:
            warnings.warn(f"{name}: upscaled {self.upscaled} image(s) smaller than the {resolution}px crop",
                          stacklevel=3)


def prepare_images(images, resolution: int, report: LoadReport | None = None) -> list[Image.Image]:
    """The readable ones of `images` (None marks an unreadable one), upscaled where smaller than the crop."""
    report = report if report is not None else LoadReport()
    prepared = []
    for image in images:
        if image is None:
            report.skipped += 1
            continue
        short = min(image.size)
        report.largest_side = max(report.largest_side, short)
        report.smallest_side = min(report.smallest_side or short, short)
        if short < resolution:
            image = at_least(image, resolution)
            report.upscaled += 1
        prepared.append(image)
        report.loaded += 1
    return prepared


def load_images(paths: list[Path], resolution: int, report: LoadReport | None = None) -> list[Image.Image]:
    """Decode files to RGB, skipping unreadable ones and upscaling images smaller than the crop."""
    return prepare_images((read_image(path) for path in paths), resolution, report)
