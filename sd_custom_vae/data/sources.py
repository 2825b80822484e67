"""A source of images: random-access (``MapSource``: files, an on-disk dataset) or a stream (``StreamSource``: a
streamed Hub dataset, WebDataset shards). Either way each image has a stable key, and the held-out validation
images are the ones whose key hashes below ``val_fraction``: never trained on, whatever the source. Which
source a ``--data`` value names is ``opener.open_source``.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image

from ..base.errors import UserError

# A source this small is decoded once and kept in memory (the built-in photos, a small folder): decoding a
# photo per sample would cost more than the training step. Larger ones are decoded on every access.
PRELOAD_IMAGES = 2000


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

    def examples(self, rank: int = 0, world: int = 1, seed: int | None = None,
                 epoch: int = 0) -> Iterator[tuple[bytes, dict]]:
        """(key, raw example) for this process's share of the stream, shuffled by `seed` and `epoch` if given."""
        from datasets.distributed import split_dataset_by_node

        dataset = self.dataset
        if seed is not None:
            dataset = dataset.shuffle(seed=seed, buffer_size=1000)
            dataset.set_epoch(epoch)
        if world > 1:
            dataset = split_dataset_by_node(dataset, rank=rank, world_size=world)
        try:
            for example in dataset:
                yield example["__sd_key__"].encode(), example
        # what a damaged file raises in datasets
        except (OSError, EOFError, ValueError, KeyError, tarfile.TarError) as error:
            raise UserError(f"{self.description}: cannot read it ({type(error).__name__}: {error}); a truncated or "
                             "damaged shard?") from error

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


def take(source: MapSource | StreamSource, limit: int | None = None, keep_unreadable: bool = False) -> list:
    """The first `limit` readable images of `source` (all of them without a limit), for evaluation or calibration;
    with `keep_unreadable`, None in place of each unreadable entry met on the way (to count them)."""
    if isinstance(source, MapSource):
        loaded = (source.image(i) for i in range(len(source)))
    else:
        loaded = (source.decode(example) for _, example in source.examples())
    found, readable = [], 0
    for image in loaded:
        if image is not None or keep_unreadable:
            found.append(image)
        readable += image is not None
        if limit is not None and readable >= limit:
            break
    return found
