"""The images ``--data`` names, wherever they live; the same readers serve ``train``, ``eval`` and ``calibrate``.

``open_source(data)`` recognises, in this order:

- nothing or ``builtin``: photos that installed packages ship (nothing is downloaded);
- a local folder written by 🤗 ``Dataset.save_to_disk``, or holding ``.parquet``/``.arrow`` files or ``.tar``
  WebDataset shards; a local ``.parquet``/``.arrow``/``.tar`` file;
- any other local folder: image files, searched recursively;
- shards by pattern: a glob (``shards/*.tar``), a brace range (``shards/train-{00000..00127}.tar``) or URLs;
- ``ORG/NAME``: a dataset on the Hugging Face Hub (``--data-split``, ``--data-revision``).

Everything but the folder and the built-in photos is read through 🤗 ``datasets``: its caching, its
streaming (``--streaming``, and always for WebDataset shards) and its Hub access. The image column is
the one whose feature is ``Image`` (for WebDataset: the jpg/jpeg/png/webp key each sample has), or
``--image-column``.

A source is either random-access (``MapSource``: files, or an on-disk dataset) or a stream
(``StreamSource``). Either way each image has a stable key, and the held-out validation images are
the ones whose key hashes below ``val_fraction``: never trained on, whatever the source.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import io
import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

BUILTIN = "builtin"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
DATA_FILES = {".parquet": "parquet", ".arrow": "arrow"}
SHARD_SUFFIX = ".tar"
WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
# A source this small is decoded once and kept in memory (the built-in photos, a small folder): decoding a
# photo per sample would cost more than the training step. Larger ones are decoded on every access.
PRELOAD_IMAGES = 2000
_HUB_DATASET = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class DataOptions:
    """How to read a source; the ``--data-*`` flags."""

    split: str = "train"
    revision: str | None = None
    image_column: str | None = None
    streaming: bool = False


def bucket(key: bytes) -> float:
    """A stable number in [0, 1) per image key: below the validation fraction means held out."""
    return int(hashlib.sha1(key).hexdigest()[:8], 16) / 0x100000000


class MapSource:
    """Images by index: files, or a 🤗 ``Dataset`` (memory-mapped Arrow, decoded on access)."""

    def __init__(self, description: str, count: int, load: Callable[[int], Image.Image | None],
                 key: Callable[[int], bytes], held_out: list[int] | None = None):
        self.description, self.count, self._load, self._key = description, count, load, key
        self.fixed_held_out = held_out  # the built-in photos come with their own split
        self.cache: dict[int, Image.Image | None] | None = {} if count <= PRELOAD_IMAGES else None
        self.streaming = False

    def __len__(self) -> int:
        return self.count

    def image(self, index: int) -> Image.Image | None:
        """8-bit RGB, or None for an entry that is not a readable image."""
        if self.cache is None:
            return self._load(index)
        if index not in self.cache:
            self.cache[index] = self._load(index)
        return self.cache[index]

    def split(self, val_fraction: float) -> tuple[list[int], list[int]]:
        """(training indices, held-out indices, most held-out first): disjoint, stable as images are added."""
        if self.fixed_held_out is not None:
            held = set(self.fixed_held_out)
            return [i for i in range(self.count) if i not in held], list(self.fixed_held_out)
        if self.count < 2:
            return list(range(self.count)), []
        buckets = [bucket(self._key(i)) for i in range(self.count)]
        held_out = sorted((i for i in range(self.count) if buckets[i] < val_fraction), key=buckets.__getitem__)
        if not held_out:  # a small folder: still hold one image out
            held_out = [min(range(self.count), key=buckets.__getitem__)]
        held = set(held_out)
        return [i for i in range(self.count) if i not in held], held_out


class StreamSource:
    """Images one after another: a streamed 🤗 ``IterableDataset`` (a Hub dataset, WebDataset shards)."""

    def __init__(self, description: str, dataset, decode: Callable[[dict], Image.Image | None]):
        self.description, self.dataset, self._decode = description, dataset, decode
        self.streaming = True

    def examples(self, rank: int = 0, world: int = 1, seed: int | None = None, epoch: int = 0) -> Iterator[tuple[bytes, dict]]:
        """(key, raw example) for this process's share of the stream, shuffled by `seed` and `epoch` if given."""
        from datasets.distributed import split_dataset_by_node

        dataset = self.dataset
        if seed is not None:
            dataset = dataset.shuffle(seed=seed, buffer_size=1000)
            dataset.set_epoch(epoch)
        if world > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        for example in dataset:
            yield example["__sd_key__"].encode(), example

    def decode(self, example: dict) -> Image.Image | None:
        return self._decode(example)

    def held_out(self, count: int, val_fraction: float) -> list[Image.Image]:
        """The first `count` readable held-out images of the (unshuffled, unsplit) stream."""
        images = []
        for key, example in self.examples():
            if bucket(key) < val_fraction and (image := self.decode(example)) is not None:
                images.append(image)
                if len(images) == count:
                    break
        return images


# -- decoding ----------------------------------------------------------------------------------------------


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


# -- opening a source ----------------------------------------------------------------------------------


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` → a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` alternatives too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") else 0
        options = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def _shard_files(data: str) -> list[str] | None:
    """The .tar shards `data` names by brace pattern, glob or URL; None if it names none."""
    if not data.endswith(SHARD_SUFFIX) and "{" not in data:
        return None
    names = []
    for name in expand_braces(data):
        if "://" in name:
            names.append(name)
        elif any(c in name for c in "*?["):
            names += sorted(glob.glob(name))
        else:
            names.append(name)
    missing = [n for n in names if "://" not in n and not os.path.isfile(n)]
    if missing:
        raise FileNotFoundError(f"--data {data}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    return names or None


def _image_column(features, requested: str | None, source: str) -> list[str]:
    """The column(s) holding images: `requested`, else those with the Image feature."""
    from datasets import Image as ImageFeature

    columns = list(features) if features is not None else []
    if requested is not None:
        if features is not None and requested not in columns:
            raise ValueError(f"--image-column {requested!r} is not a column of {source} (it has {', '.join(columns)})")
        return [requested]
    found = [name for name, feature in (features or {}).items() if isinstance(feature, ImageFeature)]
    preferred = [key for key in WEBDATASET_IMAGE_KEYS if key in found]
    found = preferred + [name for name in found if name not in preferred]
    if not found:
        raise ValueError(f"{source} has no column of images (columns: {', '.join(columns) or 'unknown'}); "
                         "name the one holding them with --image-column")
    return found


def decode_value(value) -> Image.Image | None:
    """An image as 🤗 datasets hands it over (PIL, {"bytes", "path"}, raw bytes or a path) → 8-bit RGB, or None."""
    try:
        if isinstance(value, Image.Image):
            return as_rgb(value)
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            with Image.open(io.BytesIO(value)) as image:
                image.load()
                return as_rgb(image)
        if isinstance(value, str):
            return read_image(Path(value))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    return None


def _first_image(example: dict, columns: list[str]) -> Image.Image | None:
    for column in columns:
        if example.get(column) is not None:
            return decode_value(example[column])
    return None


def _from_datasets(dataset, description: str, options: DataOptions) -> MapSource | StreamSource:
    from datasets import IterableDataset

    columns = _image_column(dataset.features, options.image_column, description)
    from datasets import Image as ImageFeature

    for column in columns:  # decode here (to 8-bit RGB, EXIF applied) rather than in datasets
        if dataset.features is not None and isinstance(dataset.features.get(column), ImageFeature):
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(dataset, IterableDataset):
        keyed = dataset.map(lambda example, index: {"__sd_key__": str(example.get("__key__") or index)}, with_indices=True)
        return StreamSource(description, keyed, lambda example: _first_image(example, columns))
    return MapSource(
        f"{description} ({len(dataset)} images)",
        len(dataset),
        lambda index: _first_image(dataset[index], columns),
        lambda index: str(index).encode(),
    )


def open_source(data: str | os.PathLike | None, options: DataOptions = DataOptions()) -> MapSource | StreamSource:
    """The images `data` names (see the module docstring)."""
    import datasets

    if data is None or str(data) == BUILTIN:
        return builtin_source()
    data = str(data)
    path = Path(data)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(data)
            if isinstance(loaded, datasets.DatasetDict):
                if options.split not in loaded:
                    raise ValueError(f"{data} has splits {', '.join(loaded)}, not {options.split!r}: pass --data-split")
                loaded = loaded[options.split]
            return _from_datasets(loaded, f"{data} (saved dataset)", options)
        for suffix, builder in DATA_FILES.items():
            files = sorted(str(p) for p in path.rglob(f"*{suffix}"))
            if files:
                loaded = datasets.load_dataset(builder, data_files=files, split="train", streaming=options.streaming)
                return _from_datasets(loaded, f"{data} ({len(files)} {suffix} file(s))", options)
        shards = sorted(str(p) for p in path.rglob(f"*{SHARD_SUFFIX}"))
        if shards and not find_images(path):
            return _webdataset(shards, f"{data} ({len(shards)} WebDataset shard(s))", options)
        return folder_source(path)
    if path.is_file() and path.suffix in DATA_FILES:
        loaded = datasets.load_dataset(DATA_FILES[path.suffix], data_files=[data], split="train", streaming=options.streaming)
        return _from_datasets(loaded, data, options)
    shards = _shard_files(data)
    if shards:
        return _webdataset(shards, f"{data} ({len(shards)} WebDataset shard(s))", options)
    if _HUB_DATASET.match(data) and not path.exists():
        loaded = datasets.load_dataset(data, split=options.split, revision=options.revision, streaming=options.streaming)
        return _from_datasets(loaded, f"{data} (Hub dataset, split {options.split})", options)
    raise FileNotFoundError(
        f"--data {data}: no such image folder, dataset folder, data file or shard pattern (for a Hub dataset: ORG/NAME)"
    )


def _webdataset(shards: list[str], description: str, options: DataOptions) -> StreamSource:
    import datasets

    # The fields are declared rather than inferred: inference reads a few samples and refuses shards whose
    # samples carry different image types (one .jpg, the next .png), which WebDataset allows.
    image_keys = dict.fromkeys((*WEBDATASET_IMAGE_KEYS, *([options.image_column] if options.image_column else [])))
    features = datasets.Features({
        "__key__": datasets.Value("string"), "__url__": datasets.Value("string"),
        **{key: datasets.Image(decode=False) for key in image_keys},
    })
    # WebDataset shards are read as they stream: a copy converted to Arrow could outgrow the disk
    loaded = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", streaming=True, features=features)
    source = _from_datasets(loaded, description, options)
    assert isinstance(source, StreamSource)
    return source


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_source(folder: Path) -> MapSource:
    paths = find_images(folder)
    if not paths:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return MapSource(
        f"{folder} ({len(paths)} images)",
        len(paths),
        lambda index: read_image(paths[index]),
        lambda index: os.fsencode(paths[index].relative_to(folder)),  # any file name, UTF-8 or not
    )


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


def take(source: MapSource | StreamSource, limit: int | None = None) -> list[Image.Image]:
    """Every readable image of `source` (the first `limit`), for evaluation or calibration."""
    if isinstance(source, MapSource):
        loaded = (source.image(i) for i in range(len(source)))
    else:
        loaded = (source.decode(example) for _, example in source.examples())
    return list(itertools.islice((image for image in loaded if image is not None), limit))
