"""Images read through 🤗 ``datasets``: a Hub dataset, a ``save_to_disk`` folder, parquet/arrow files, WebDataset
shards. Its caching, its streaming (``--streaming``, and always for WebDataset shards) and its Hub access are
used as they are; the images are decoded here (``image_file.decode_value``), as every other image is.

The image column is the one whose feature is ``Image`` (for WebDataset: the jpg/jpeg/png/webp key each
sample has), or ``--image-column``.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from collections.abc import Iterator

from PIL import Image

from ..base.errors import UserError
from .image_file import decode_value
from .sources import DataOptions, MapSource, StreamSource

SHARD_SUFFIX = ".tar"
WEBDATASET_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_SHARDS = 100_000  # a pattern naming more is a typo ({0..99999999}), not a data set


def expand_braces(pattern: str) -> Iterator[str]:
    """``a-{000..002}.tar`` → a-000.tar, a-001.tar, a-002.tar (zero padding kept); ``{x,y}`` alternatives too.
    Lazily: a pattern of a billion names costs nothing until they are read."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        yield pattern
        return
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        first, last = numeric.groups()
        width = len(first) if first.startswith("0") else 0
        options = (str(n).zfill(width) for n in range(int(first), int(last) + 1))
    else:
        options = iter(body.split(","))
    for option in options:
        yield from expand_braces(head + option + tail)


def webdataset_shards(data: str) -> list[str] | None:
    """The .tar shards `data` names by brace pattern, glob or URL; None if it names none."""
    if not data.endswith(SHARD_SUFFIX) and "{" not in data:
        return None
    expanded = list(itertools.islice(expand_braces(data), MAX_SHARDS + 1))
    if len(expanded) > MAX_SHARDS:
        raise UserError(f"--data {data} names more than {MAX_SHARDS:,} shards: check the {{first..last}} range")
    names = []
    for name in expanded:
        if "://" in name:
            names.append(name)
        elif any(c in name for c in "*?["):
            names += sorted(glob.glob(name))
        else:
            names.append(name)
    missing = [n for n in names if "://" not in n and not os.path.isfile(n)]
    if missing:
        raise FileNotFoundError(f"--data {data}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
    if any(n.startswith(("http://", "https://")) for n in names):
        try:  # fsspec reads http(s) with aiohttp, a dependency (fsspec[http]) that an older install may lack
            import aiohttp  # noqa: F401
        except ImportError:
            raise UserError(f"--data {data}: shards given as URLs are read with aiohttp, which is not installed: "
                            "pip install aiohttp") from None
    return names or None


def _image_column(features, requested: str | None, source: str) -> list[str]:
    """The column(s) holding images: `requested`, else those with the Image feature."""
    from datasets import Image as ImageFeature

    columns = list(features) if features is not None else []
    if requested is not None:
        if features is not None and requested not in columns:
            raise UserError(f"--image-column {requested!r} is not a column of {source} (it has {', '.join(columns)})")
        return [requested]
    found = [name for name, feature in (features or {}).items() if isinstance(feature, ImageFeature)]
    preferred = [key for key in WEBDATASET_IMAGE_KEYS if key in found]
    found = preferred + [name for name in found if name not in preferred]
    if not found:
        raise UserError(f"{source} has no column of images (columns: {', '.join(columns) or 'unknown'}); "
                         "name the one holding them with --image-column")
    return found


def _first_image(example: dict, columns: list[str]) -> Image.Image | None:
    for column in columns:
        if example.get(column) is not None:
            return decode_value(example[column])
    return None


def from_datasets(dataset, description: str, options: DataOptions) -> MapSource | StreamSource:
    """A source over a loaded 🤗 ``Dataset`` (random access) or ``IterableDataset`` (a stream)."""
    from datasets import Image as ImageFeature
    from datasets import IterableDataset

    columns = _image_column(dataset.features, options.image_column, description)
    for column in columns:  # decode here (to 8-bit RGB, EXIF applied) rather than in datasets
        if dataset.features is not None and isinstance(dataset.features.get(column), ImageFeature):
            dataset = dataset.cast_column(column, ImageFeature(decode=False))
    if isinstance(dataset, IterableDataset):
        keyed = dataset.map(lambda example, index: {"__sd_key__": str(example.get("__key__") or index)},
                            with_indices=True)
        return StreamSource(description, keyed, lambda example: _first_image(example, columns))
    return MapSource(
        f"{description} ({len(dataset)} images)",
        len(dataset),
        lambda index: _first_image(dataset[index], columns),
        lambda index: str(index).encode(),
    )


def webdataset(shards: list[str], description: str, options: DataOptions) -> StreamSource:
    import datasets

    # The fields are declared rather than inferred: inference reads a few samples and refuses shards whose
    # samples carry different image types (one .jpg, the next .png), which WebDataset allows.
    image_keys = dict.fromkeys((*WEBDATASET_IMAGE_KEYS, *([options.image_column] if options.image_column else [])))
    features = datasets.Features({
        "__key__": datasets.Value("string"), "__url__": datasets.Value("string"),
        **{key: datasets.Image(decode=False) for key in image_keys},
    })
    # WebDataset shards are read as they stream: a copy converted to Arrow could outgrow the disk
    loaded = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", streaming=True,
                                   features=features)
    source = from_datasets(loaded, description, options)
    assert isinstance(source, StreamSource)
    return source
