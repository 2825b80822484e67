"""Photos that installed packages ship (scikit-image, scikit-learn, foolbox): the training data nothing downloads."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from PIL import Image

from .image_file import read_image
from .sources import MapSource

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
    spec = importlib.util.find_spec(package.split(".")[0])
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


def builtin_source() -> MapSource:
    train, val = builtin_photos()
    paths = train + val
    return MapSource(
        f"built-in photos ({len(train)} train, {len(val)} validation)",
        len(paths),
        lambda index: read_image(paths[index]),
        lambda index: paths[index].name.encode(),
        held_out=list(range(len(train), len(paths))),
    )


def builtin_held_out() -> list[Image.Image]:
    """The built-in photos that training holds out (what `eval` measures without --data)."""
    source = builtin_source()
    return [source.image(i) for i in source.split(0.0)[1]]


