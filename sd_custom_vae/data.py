"""Images for training and evaluation: any folder, or photos that installed packages ship.

Images are RGB tensors in [-1, 1], as Stable Diffusion's VAE expects. Training draws random
crops (and flips); every draw is a pure function of (seed, sample number), so a resumed run sees
exactly the crops an uninterrupted one would have, on any number of processes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
BUILTIN = "builtin"

# Photos inside the scikit-image, scikit-learn and foolbox wheels; nothing is downloaded.
# Validation photos are never trained on (and the stereo motorcycle pair stays together).
_BUILTIN_TRAIN = {
    "skimage": ["astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                "motorcycle_left.png", "motorcycle_right.png", "retina.jpg"],
    "sklearn.datasets": ["china.jpg"],
    "foolbox": [f"imagenet_{name}.jpg" for name in
                ("00_243", "01_559", "02_438", "03_990", "05_853", "06_609", "08_915", "09_455",
                 "10_541", "11_630", "13_471", "14_129", "15_99", "17_22", "18_317")],
}
_BUILTIN_VAL = {
    "skimage": ["rocket.jpg"],
    "sklearn.datasets": ["flower.jpg"],
    "foolbox": [f"imagenet_{name}.jpg" for name in ("04_949", "07_609", "12_741", "16_251", "19_305")],
}
_PACKAGE_IMAGE_FOLDERS = {"skimage": "data", "sklearn.datasets": "images", "foolbox": "data"}


def _package_folder(package: str) -> Path | None:
    # find_spec locates a package without importing it (importing foolbox pulls in much more)
    top = package.split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0], *package.split(".")[1:], _PACKAGE_IMAGE_FOLDERS[package])


def builtin_photos() -> tuple[list[Path], list[Path]]:
    """(training photos, validation photos) from installed packages."""
    splits = []
    for table in (_BUILTIN_TRAIN, _BUILTIN_VAL):
        paths = []
        for package, names in table.items():
            folder = _package_folder(package)
            paths += [folder / n for n in names if folder is not None and (folder / n).exists()]
        splits.append(paths)
    if not splits[0] or not splits[1]:
        raise FileNotFoundError("the built-in photos were not found: is scikit-image installed?")
    return splits[0], splits[1]


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def split_paths(paths: list[Path], root: Path, val_fraction: float = 0.1) -> tuple[list[Path], list[Path]]:
    """A deterministic split by a hash of each relative path: adding images never moves old ones."""
    if len(paths) < 2:
        return paths, []
    def bucket(path: Path) -> float:
        digest = hashlib.sha1(os.fsencode(path.relative_to(root))).hexdigest()  # any file name, UTF-8 or not
        return int(digest[:8], 16) / 0xFFFFFFFF
    val = [p for p in paths if bucket(p) < val_fraction]
    if not val:  # small folders: still hold one image out
        val = [min(paths, key=bucket)]
    train = [p for p in paths if p not in val]
    return train, val


# Crops may be upscaled from images somewhat smaller than them (with a warning); beyond this factor
# for every image, a resolution is a mistake (4096-px crops of 64-px photos cost gigabytes for nothing).
MAX_UPSCALE = 2


@dataclass
class LoadReport:
    loaded: int = 0
    skipped: int = 0  # unreadable or not an image
    upscaled: int = 0  # smaller than the crop
    largest_side: int = 0  # the largest shorter side among the images read


def _at_least(image: Image.Image, side: int) -> Image.Image:
    """Upscale (bicubic) so that the shorter side is at least `side`."""
    short = min(image.size)
    if short >= side:
        return image
    scale = side / short
    return image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.BICUBIC)


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


def read_image(path: Path) -> Image.Image | None:
    """The image in `path` as 8-bit RGB, or None if it is not a readable image (or a decompression bomb)."""
    try:
        with Image.open(path) as image:
            image.load()
            return as_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def load_images(paths: list[Path], resolution: int, report: LoadReport | None = None) -> list[Image.Image]:
    """Decode to RGB, skipping unreadable files and upscaling images smaller than the crop."""
    report = report if report is not None else LoadReport()
    images = []
    for path in paths:
        image = read_image(path)
        if image is None:
            report.skipped += 1
            continue
        report.largest_side = max(report.largest_side, min(image.size))
        if min(image.size) < resolution:
            image = _at_least(image, resolution)
            report.upscaled += 1
        images.append(image)
        report.loaded += 1
    return images


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → (3, H, W) float in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_image(tensor: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] → PIL RGB."""
    array = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


class RandomCrops(torch.utils.data.Dataset):
    """Sample `k` is a random crop (and maybe a horizontal flip) drawn with a generator seeded by (seed, k).

    Larger photos are drawn more often (weight ∝ sqrt(area)): they hold more distinct crops.
    """

    def __init__(self, images: list[Image.Image], resolution: int, seed: int = 0, flip: bool = True, length: int = 2**62):
        if not images:
            raise ValueError("no images to train on")
        self.images, self.resolution, self.seed, self.flip, self.length = images, resolution, seed, flip, length
        weights = torch.tensor([float(im.width * im.height) ** 0.5 for im in images])
        self.weights = weights / weights.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        image = self.images[int(torch.multinomial(self.weights, 1, generator=generator))]
        top = int(torch.randint(0, image.height - self.resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, image.width - self.resolution + 1, (1,), generator=generator))
        crop = to_tensor(image.crop((left, top, left + self.resolution, top + self.resolution)))
        if self.flip and torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        return crop


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


@dataclass
class ImageData:
    """The training images and the fixed validation crops of a run."""

    train: list[Image.Image]
    val_crops: torch.Tensor
    description: str
    report: LoadReport


def load_image_data(
    data: str | Path | None,
    resolution: int,
    val_fraction: float = 0.1,
    eval_crops_per_image: int = 4,
    eval_resolution: int | None = None,
) -> ImageData:
    """`data` is a folder of images (searched recursively) or None/"builtin" for the built-in photos.

    Training crops are `resolution` pixels; validation crops `eval_resolution` (default: the same).
    """
    eval_resolution = eval_resolution or resolution
    report = LoadReport()
    if data is None or str(data) == BUILTIN:
        train_paths, val_paths = builtin_photos()
        description = f"built-in photos ({len(train_paths)} train, {len(val_paths)} validation)"
    else:
        root = Path(data)
        paths = find_images(root)
        if not paths:
            raise ValueError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
        train_paths, val_paths = split_paths(paths, root, val_fraction)
        description = f"{root} ({len(train_paths)} train, {len(val_paths)} validation)"
    train = load_images(train_paths, resolution, report)
    if train and resolution > MAX_UPSCALE * report.largest_side:
        raise ValueError(
            f"--resolution {resolution} is more than {MAX_UPSCALE}× the largest training image in "
            f"{data or 'the built-in photos'} (shorter side {report.largest_side} px): every crop would be a blown-up "
            f"copy, costing memory for nothing; choose a resolution up to about {report.largest_side}"
        )
    val = load_images(val_paths, max(resolution, eval_resolution), report)
    if not train:
        raise ValueError(
            f"{data}: none of the {len(train_paths)} training files could be read as an image "
            f"({report.skipped} unreadable file(s) skipped in all)"
        )
    if not val:  # every held-out file was unreadable: hold one readable training image out instead
        if len(train) < 2:
            raise ValueError(f"{data}: need at least two readable images (one to train on, one to validate)")
        val = [_at_least(train.pop(), eval_resolution)]
    if report.skipped:
        warnings.warn(f"{data}: skipped {report.skipped} file(s) that could not be read as images", stacklevel=2)
    if report.upscaled:
        warnings.warn(f"{data}: upscaled {report.upscaled} image(s) smaller than the {resolution}px crop", stacklevel=2)
    return ImageData(train, evaluation_crops(val, eval_resolution, eval_crops_per_image), description, report)
