"""One file → what the encoder needs, in a worker: read safely, hash, decode small, run the model's PIL steps.

The model's preprocess (open_clip: Resize → CenterCrop → RGB → ToTensor → Normalize) is
split in two: the PIL steps run in the decode workers and hand back a small uint8 array
(224×224×3 = 150 kB for ViT-B-32), the tensor steps run once per batch in the main
process. The result is bit-for-bit what ``encoder.preprocess(image)`` gives.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
from PIL import Image

from .decode import MAX_PIXELS, DecodeError, decode_picture
from .hashes import CONTENT_HASH, content_hash
from .scan import ScannedFile

MAX_FILE_BYTES = 1 << 30  # 1 GiB: no picture we can embed is bigger; reading more would only eat memory
_TO_TENSOR = ("ToTensor", "MaybeToTensor")


@dataclass
class Prepared:
    """A scanned file after the worker: hashed, and decoded to model-ready pixels when it needs encoding."""

    file: ScannedFile
    hash: str | None = None
    pixels: np.ndarray | None = None  # uint8 H×W×3 after the PIL steps of the preprocess
    width: int | None = None
    height: int | None = None
    taken_at: datetime | None = None
    error: str | None = None
    vanished: bool = False


class SplitPreprocess:
    """The model's preprocess as PIL steps (per picture, in workers) and tensor steps (per batch)."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]):
        self.preprocess = preprocess
        self.pil_steps: list[Callable] = []
        self.mean = self.std = None
        self.fast = False
        steps = list(getattr(preprocess, "transforms", []) or [])
        names = [type(t).__name__ for t in steps]
        if not any(n in _TO_TENSOR for n in names):
            return
        cut = next(i for i, n in enumerate(names) if n in _TO_TENSOR)
        after = steps[cut + 1:]
        if any("Random" in n for n in names) or not all(type(t).__name__ == "Normalize" for t in after):
            return
        self.pil_steps = steps[:cut]
        self.normalize = [(list(t.mean), list(t.std)) for t in after]
        self.fast = True

    def pil(self, image: Image.Image) -> np.ndarray:
        """In a worker: the PIL steps (fast) or just the decoded picture (fallback), as uint8 H×W×C."""
        if self.fast:
            for step in self.pil_steps:
                image = step(image)
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """In the main process: uint8 arrays → the model's N×3×H×W input."""
        if not self.fast:
            return torch.stack([self.preprocess(Image.fromarray(a)) for a in arrays])
        from torchvision.transforms import functional as F

        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
        for mean, std in self.normalize:
            batch = F.normalize(batch, mean, std)
        return batch


def read_file(path: str) -> bytes:
    """The bytes of a regular file; never blocks on a FIFO or a device that replaced it since the scan."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not a regular file (device, FIFO or socket)")
        if st.st_size > MAX_FILE_BYTES:
            raise DecodeError(f"file too large to be a picture ({st.st_size:,} bytes)")
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def prepare_file(file: ScannedFile, min_side: int, split: SplitPreprocess, skip: Collection[str] = (),
                 max_pixels: int = MAX_PIXELS, hash_kind: str = CONTENT_HASH) -> Prepared:
    """Everything the encoder needs from one file, or the reason it cannot be had. Never raises."""
    if file.problem:
        return Prepared(file, error=file.problem)
    try:
        data = read_file(file.path)
    except FileNotFoundError:
        return Prepared(file, vanished=True)
    except DecodeError as e:
        return Prepared(file, error=str(e))
    except OSError as e:
        return Prepared(file, error=f"unreadable: {e.strerror or e}")
    prepared = Prepared(file, hash=content_hash(data, hash_kind))
    if prepared.hash in skip:  # the same bytes are embedded already: the vector is copied, no decode
        return prepared
    try:
        picture = decode_picture(data, min_side, max_pixels)
        prepared.pixels = split.pil(picture.image)
        prepared.width, prepared.height, prepared.taken_at = picture.width, picture.height, picture.taken_at
    except DecodeError as e:
        prepared.error = str(e)
    except Exception as e:  # a picture that breaks the transform must not stop the run
        prepared.error = f"{type(e).__name__}: {e}"
    return prepared
