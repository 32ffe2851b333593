"""One file → what the encoder needs, in a worker: read safely, hash, decode small, run the model's PIL steps.

Reading, decoding and the split preprocess are shared with the trainer (``encoders``); this
module adds what only the indexer needs: hashing, skipping known contents, the reason of a failure.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from encoders.decode import MAX_PIXELS, DecodeError, decode_picture, read_file
from encoders.preprocess import SplitPreprocess

from .hashes import CONTENT_HASH, content_hash
from .scan import ScannedFile


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
    transient: bool = False  # the error may not happen again (an I/O error, a timeout): retried by later runs
    vanished: bool = False


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
    except OSError as e:  # EIO, a network mount that stalled, a permission since changed: the bytes are not to blame
        return Prepared(file, error=f"unreadable: {e.strerror or e}", transient=True)
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
