"""Which images a ``--data`` value names: the same answer for ``train``, ``eval``, ``calibrate`` and ``fp16-fix``.

``open_source(data)`` recognises, in this order:

- nothing or ``builtin``: photos that installed packages ship (nothing is downloaded);
- a local folder written by 🤗 ``Dataset.save_to_disk``, or holding ``.parquet``/``.arrow`` files or ``.tar``
  WebDataset shards; a local ``.parquet``/``.arrow``/``.tar`` file;
- any other local folder: image files, searched recursively;
- shards by pattern: a glob (``shards/*.tar``), a brace range (``shards/train-{00000..00127}.tar``) or URLs;
- ``ORG/NAME``: a dataset on the Hugging Face Hub (``--data-split``, ``--data-revision``), unless it looks
  like a local path (``looks_like_a_path``): a missing local folder is an error, never a stranger's dataset.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..base.errors import UserError
from .builtin import builtin_source
from .hf_datasets import SHARD_SUFFIX, from_datasets, webdataset, webdataset_shards
from .image_file import IMAGE_SUFFIXES, read_image
from .sources import DataOptions, MapSource, StreamSource

BUILTIN = "builtin"
DATA_FILES = {".parquet": "parquet", ".arrow": "arrow"}
_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+$")


def looks_like_a_path(name: str) -> bool:
    """Whether `name`, which does not exist here, was meant as a local path rather than a Hub name: it is written
    as one (``./x``, ``/x``, ``~/x``, a backslash) or its first folder exists here (``photos/train`` beside a
    ``photos/`` folder is a typo, not a Hub dataset)."""
    if "://" in name:
        return False
    if name.startswith(("/", "./", "../", "~")) or "\\" in name or name in (".", ".."):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()


def absolute(name: str | None) -> str | None:
    """`name` with a local path (a folder, a file, a shard pattern) made absolute, so that it means the same from
    any folder; a Hub name or a URL as it is; the built-in photos as None."""
    if name is None or name == BUILTIN:
        return None
    if "://" in name:
        return name
    if Path(name).exists() or looks_like_a_path(name) or any(c in name for c in "{*?["):
        return os.path.abspath(os.path.expanduser(name))
    return name


def refuse_unused(options: DataOptions, data: str | None, what: str, split: bool = False, revision: bool = False,
                  column: bool = False) -> None:
    """Refuse a ``--data-*`` option given for a kind of source it means nothing to (`split`, `revision`, `column`:
    those it does mean something to): ignored, it would leave the user believing, say, that only the test split
    was scored. The default split, ``train``, is what every source without splits holds, and passes."""
    given = [f"{flag} {value}" for flag, applies, value, default in (
        ("--data-split", split, options.split, DataOptions.split),
        ("--data-revision", revision, options.revision, None),
        ("--image-column", column, options.image_column, None),
    ) if not applies and value != default]
    if given:
        raise UserError(f"--data {data or BUILTIN} is {what}: {' and '.join(given)} means nothing for it and would "
                         "be ignored; leave it out")


def open_source(data: str | os.PathLike | None, options: DataOptions = DataOptions()) -> MapSource | StreamSource:
    """The images `data` names (see the module docstring)."""
    import datasets

    if data is None or str(data) == BUILTIN:
        refuse_unused(options, None, "the built-in photos")
        return builtin_source()
    data = str(data)
    path = Path(data)
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            loaded = datasets.load_from_disk(data)
            has_splits = isinstance(loaded, datasets.DatasetDict)
            refuse_unused(options, data, "a saved dataset" + ("" if has_splits else " of one split"),
                          split=has_splits, column=True)
            if has_splits:
                if options.split not in loaded:
                    raise UserError(f"{data} has splits {', '.join(loaded)}, not {options.split!r}: pass --data-split")
                loaded = loaded[options.split]
            return from_datasets(loaded, f"{data} (saved dataset)", options)
        for suffix, builder in DATA_FILES.items():
            files = sorted(str(p) for p in path.rglob(f"*{suffix}"))
            if files:
                refuse_unused(options, data, f"a folder of {suffix} files", column=True)
                loaded = datasets.load_dataset(builder, data_files=files, split="train", streaming=options.streaming)
                return from_datasets(loaded, f"{data} ({len(files)} {suffix} file(s))", options)
        shards = sorted(str(p) for p in path.rglob(f"*{SHARD_SUFFIX}"))
        if shards and not find_images(path):
            refuse_unused(options, data, "a folder of WebDataset shards", column=True)
            return webdataset(shards, f"{data} ({len(shards)} WebDataset shard(s))", options)
        refuse_unused(options, data, "a folder of image files")
        return folder_source(path)
    if path.is_file() and path.suffix in DATA_FILES:
        refuse_unused(options, data, f"a {path.suffix} file", column=True)
        try:
            loaded = datasets.load_dataset(DATA_FILES[path.suffix], data_files=[data], split="train",
                                           streaming=options.streaming)
        except ValueError as error:  # pyarrow's ArrowInvalid is one: a damaged or foreign file
            raise UserError(f"--data {data}: not a readable {path.suffix} file ({error})") from None
        return from_datasets(loaded, data, options)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        raise UserError(f"--data {data} is one image file: give the folder that holds the images")
    shards = webdataset_shards(data)
    if shards:
        refuse_unused(options, data, "WebDataset shards", column=True)
        return webdataset(shards, f"{data} ({len(shards)} WebDataset shard(s))", options)
    if path.exists():
        raise UserError(f"--data {data}: not an image folder, dataset folder, .parquet/.arrow file or .tar shard")
    if _HUB_NAME.match(data) and not looks_like_a_path(data):
        try:
            loaded = datasets.load_dataset(data, split=options.split, revision=options.revision,
                                           streaming=options.streaming)
        except (ConnectionError, FileNotFoundError) as error:  # offline, unreachable, or no such dataset
            # ORG/NAME is also how a local folder is written: say both, as every command does for a missing folder
            raise FileNotFoundError(f"--data {data}: no such image folder here, and no Hub dataset of that name could "
                                    f"be opened ({type(error).__name__}: {error})") from None
        except ValueError as error:  # datasets' word for an unknown --split, config or --revision
            raise UserError(f"--data {data}: {error}") from None
        return from_datasets(loaded, f"{data} (Hub dataset, split {options.split})", options)
    raise FileNotFoundError(
        f"--data {data}: no such image folder, dataset folder, data file or shard pattern (for a Hub dataset: ORG/NAME)"
    )


def find_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such image folder: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_source(folder: Path) -> MapSource:
    paths = find_images(folder)
    if not paths:
        raise UserError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, recursively)")
    return MapSource(
        f"{folder} ({len(paths)} images)",
        len(paths),
        lambda index: read_image(paths[index]),
        lambda index: os.fsencode(paths[index].relative_to(folder)),  # any file name, UTF-8 or not
    )
