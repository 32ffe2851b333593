"""Decoding pictures exactly as the indexer does (``encoders.prepare_image``), optionally into memory."""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from .corpus import Record, TarMember

MEMORY_BUDGET = int(os.environ.get("CLIPSEARCH_TRAIN_MEMORY", 2 << 30))  # bytes of decoded pixels
Image.MAX_IMAGE_PIXELS = 200_000_000


def read_bytes(source: str | TarMember) -> bytes:
    if isinstance(source, TarMember):
        with open(source.shard, "rb") as f:
            f.seek(source.offset)
            return f.read(source.size)
    with open(source, "rb") as f:
        return f.read()


def decode(source: str | TarMember, max_side: int | None = None) -> Image.Image:
    """Open, EXIF-transpose, composite onto white, RGB; shrink so the short side ≤ ``max_side``."""
    from encoders import prepare_image

    image = Image.open(io.BytesIO(read_bytes(source)))
    if max_side and image.format == "JPEG":
        image.draft("RGB", (max_side, max_side))  # JPEG scaled decode: keeps the short side ≥ max_side
    image.load()
    image = prepare_image(image)
    if max_side and min(image.size) > max_side:
        scale = max_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return image


class ImageStore:
    """Record index → prepared picture, from memory when the corpus fits, else decoded on demand.

    ``max_side`` bounds the short side kept for training (random crops of 90–100 % of the
    area are then resized to the model's input: 1.25× its size loses nothing visible).
    """

    def __init__(self, records: list[Record], max_side: int | None, in_memory: bool | None = None,
                 threads: int | None = None):
        self.sources = [r.source for r in records]
        self.max_side = max_side
        self.images: list[Image.Image | None] | None = None
        self.unreadable: Counter = Counter()
        if in_memory is None:
            side = max_side or 512
            in_memory = len(records) * side * side * 3 <= MEMORY_BUDGET
        if in_memory:
            self._decode_all(threads or min(8, (os.cpu_count() or 2) * 2))

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def _try(self, source):
        try:
            return decode(source, self.max_side), None
        except Exception as e:  # any decoder failure: the picture is skipped and counted
            return None, type(e).__name__

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

    def get(self, index: int) -> Image.Image:
        if self.images is not None:
            image = self.images[index]
            if image is None:
                raise OSError(f"unreadable picture {self.sources[index]}")
            return image
        return decode(self.sources[index], self.max_side)


def train_side(image_size: int) -> int:
    return math.ceil(image_size * 1.25)
