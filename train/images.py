"""Pictures for training and evaluation, read and decoded by the indexer's own decoder.

``encoders.decode`` is the one decoder: bounded file reads, JPEGs at reduced DCT scale, EXIF
orientation, transparency onto white, big pictures reduced early, a pixel limit. Training
keeps small pictures for random crops (``TrainPictures``); validation and ``search eval``
keep exactly what the indexer embeds, the model's PIL steps applied (``ModelPictures``):
at most the model's input size per picture, whatever the size of the file.
"""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from encoders.decode import DecodeError, check_file_size, decode_picture, read_file
from encoders.preprocess import SplitPreprocess

from .corpus import Record, TarMember

MEMORY_BUDGET = int(os.environ.get("CLIPSEARCH_TRAIN_MEMORY", 2 << 30))  # bytes of decoded pixels


def read_bytes(source: str | TarMember) -> bytes:
    if isinstance(source, TarMember):
        check_file_size(source.size)
        with open(source.shard, "rb") as f:
            f.seek(source.offset)
            return f.read(source.size)
    return read_file(source)


def failure_reason(error: BaseException) -> str:
    """A short reason to count skipped pictures by (the decoder's reasons carry details after ':' or '(')."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    if isinstance(error, DecodeError):
        return str(error).split(":")[0].split(" (")[0]
    return type(error).__name__


class TrainPictures:
    """Bytes → an upright RGB picture whose short side is at most ``side`` (random crops are cut from it).

    ``side`` is 1.25× the model's input: random crops of 90–100 % of the area, resized to the
    input, lose nothing visible.
    """

    def __init__(self, image_size: int):
        self.side = math.ceil(image_size * 1.25)
        self.bytes_each = self.side * self.side * 3

    def __call__(self, data: bytes) -> Image.Image:
        image = decode_picture(data, self.side).image
        if min(image.size) > self.side:
            scale = self.side / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return image


class ModelPictures:
    """Bytes → the pixels the indexer embeds: decoded at the model's size, the preprocess's PIL steps run.

    What is kept is a uint8 array (the model's input, e.g. 224×224×3); ``collate`` turns a list
    of them into the input batch, bit for bit what ``preprocess`` gives on the decoded picture.
    """

    def __init__(self, preprocess, image_size: int | tuple[int, int]):
        self.min_side = image_size if isinstance(image_size, int) else min(image_size)
        self.split = SplitPreprocess(preprocess)
        self.bytes_each = 3 * (image_size * image_size if isinstance(image_size, int) else math.prod(image_size))

    def __call__(self, data: bytes) -> np.ndarray:
        return self.split.pil(decode_picture(data, self.min_side).image)

    def collate(self, arrays: list[np.ndarray]):
        return self.split.batch(arrays)


class ImageStore:
    """Record index → prepared picture, from memory when the corpus fits, else decoded on demand."""

    def __init__(self, records: list[Record], pictures: TrainPictures | ModelPictures, in_memory: bool | None = None,
                 threads: int | None = None):
        self.sources = [r.source for r in records]
        self.pictures = pictures
        self.images: list | None = None
        self.unreadable: Counter = Counter()
        if in_memory is None:
            in_memory = len(records) * pictures.bytes_each <= MEMORY_BUDGET
        if in_memory:
            self._decode_all(threads or min(8, (os.cpu_count() or 2) * 2))

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def _try(self, source):
        try:
            return self.pictures(read_bytes(source)), None
        except Exception as e:  # any reading or decoding failure: the picture is skipped and counted
            return None, failure_reason(e)

    def _decode_all(self, threads: int) -> None:
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(self._try, self.sources, chunksize=64))
        self.images = [image for image, _ in results]
        self.unreadable.update(error for _, error in results if error)

    def readable(self) -> list[int]:
        """Indices that decoded (all, when decoding is lazy: failures are then handled per sample)."""
        if self.images is None:
            return list(range(len(self.sources)))
        return [i for i, image in enumerate(self.images) if image is not None]

    def view(self, indices: list[int]) -> ImageStore:
        """The pictures at ``indices``, sharing what is decoded already."""
        view = copy.copy(self)
        view.unreadable = Counter()
        view.keep(indices)
        return view

    def keep(self, indices: list[int]) -> None:
        self.sources = [self.sources[i] for i in indices]
        if self.images is not None:
            self.images = [self.images[i] for i in indices]

    def get(self, index: int):
        if self.images is not None:
            image = self.images[index]
            if image is None:
                raise OSError(f"unreadable picture {self.sources[index]}")
            return image
        return self.pictures(read_bytes(self.sources[index]))
