"""Open one picture file safely: every failure becomes a reason string, never an exception upward."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import Image, ImageFile, UnidentifiedImageError

from encoders import prepare_image

# 200 megapixels: beyond any camera (a 100 MP medium-format frame fits), far below a bomb.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
EXIF_DATE_TAKEN = 0x9003  # DateTimeOriginal, in the Exif sub-IFD
EXIF_IFD = 0x8769
EXIF_DATETIME = 0x0132
EXIF_ORIENTATION = 0x0112
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(Exception):
    """The file is not a picture we can embed; the message is the reason users see."""


@dataclass
class DecodedPicture:
    image: Image.Image  # RGB, upright, possibly reduced (JPEG draft) but never below `min_side`
    width: int  # of the full picture, as displayed (after EXIF orientation)
    height: int
    taken_at: datetime | None


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def _date_taken(image: Image.Image) -> datetime | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATE_TAKEN) or exif.get(EXIF_DATETIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except Exception:  # malformed EXIF is common and never worth failing a picture for
        return None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def decode_picture(data: bytes, min_side: int, max_pixels: int = MAX_PIXELS) -> DecodedPicture:
    """Bytes of a file → an upright RGB picture, reduced early when it is much larger than needed.

    ``min_side`` is the smallest side the model's preprocess needs; JPEGs are decoded at the
    smallest DCT scale that still covers it, which is most of the cost of a 12 MP photo.
    """
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's default (89 MP) would refuse real clip art.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"too many pixels: {width}×{height} is over the limit of {max_pixels:,}")
            if _orientation(image) in (5, 6, 7, 8):
                width, height = height, width
            taken_at = _date_taken(image)
            if image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's backstop, at twice our limit
        raise DecodeError(f"too many pixels: over the limit of {max_pixels:,}") from e
    except UnidentifiedImageError as e:
        raise DecodeError(_reason(e)) from e
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, IndexError, KeyError) as e:
        # Pillow signals corrupt data through many exception types.
        raise DecodeError(_reason(e)) from e
    try:
        image = prepare_image(image)
    except Exception as e:
        raise DecodeError(_reason(e)) from e
    shortest = min(image.size)
    if shortest >= 4 * min_side:
        image = image.reduce(shortest // (2 * min_side))
    return DecodedPicture(image=image, width=width, height=height, taken_at=taken_at)


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not a picture (unrecognised format)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "truncated" in text:
        return f"truncated file ({text})"
    return f"{type(error).__name__}: {text}"
