"""Open one picture safely: every failure becomes a reason string, never an exception upward.

The one decoder of the project: the indexer embeds what it returns, the query path and the search
page decode with it, and the trainer trains and validates on it, so a model sees at training time
exactly the pixels it is searched with.

Bounded three ways: the file's bytes (``read_file``), its pixel count, and the memory its decode
takes, computed from format, mode and dimensions before any pixel is decoded. Big JPEGs and JPEG
2000s decode at a reduced scale that still covers what the model needs; other formats decode whole,
and a picture whose decode would take more than ``MAX_DECODE_BYTES`` is refused with the reason.
After decoding, a big picture is converted and shrunk a strip at a time, never as whole-size copies.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from datetime import datetime

from PIL import ExifTags, Image, ImageFile, JpegImagePlugin, UnidentifiedImageError

from .files import InputFileError, read_regular_file
from .images import on_white, orientation, upright

try:
    import simplejpeg
except ImportError:  # an optional speed-up: Pillow decodes the same pixels a little slower
    simplejpeg = None

# 200 megapixels: beyond any camera (a 100 MP medium-format frame fits), far below a bomb.
MAX_PIXELS = 200_000_000
MAX_FILE_BYTES = 1 << 30  # 1 GiB: no picture we can embed is bigger; reading more would only eat memory
# Memory one picture's decode may take: a 128-megapixel PNG or TIFF at 4 bytes a pixel (any camera's
# frame); JPEGs and JPEG 2000s of any size fit, decoded at reduced scale. Two decode workers stay ~1 GiB.
MAX_DECODE_BYTES = 512 << 20
STRIP_PIXELS = 1 << 20  # pixels converted at a time while a big picture is shrunk
# Bytes a decoded pixel takes while decoding, where more than Pillow's storage (below), measured with
# ru_maxrss on 12-48 MP files (Pillow 13): libwebp decodes to RGBA and hands over copies; libheif
# converts from YCbCr; OpenJPEG keeps 32-bit samples per component; simplejpeg's array, then Pillow's.
DECODE_BYTES_PER_PIXEL = {"WEBP": 16, "HEIF": 8, "AVIF": 8, "JPEG2000": 20, "JPEG": 8, "MPO": 8}
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
EXIF_DATE_TAKEN = 0x9003  # DateTimeOriginal, in the Exif sub-IFD
EXIF_IFD = 0x8769
EXIF_DATETIME = 0x0132
EXIF_THUMBNAIL_OFFSET, EXIF_THUMBNAIL_LENGTH = 0x0201, 0x0202  # in IFD1, from the TIFF header after b"Exif\0\0"
MPF_PREVIEWS = frozenset({"Large Thumbnail (VGA Equivalent)", "Large Thumbnail (Full HD Equivalent)"})  # Pillow's names
ASPECT_TOLERANCE = 0.01  # how far a preview's width/height may be from the picture's: the model's crop barely moves
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DecodeError(Exception):
    """The file is not a picture we can embed; the message is the reason users see."""


@dataclass
class DecodedPicture:
    image: Image.Image  # RGB, upright, possibly reduced (scaled decode, then shrunk) but never below `min_side`
    width: int  # of the full picture, as displayed (after EXIF orientation)
    height: int
    taken_at: datetime | None


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES; never blocks on a FIFO or a device that
    replaced it since the scan. DecodeError says why not; OSError when it cannot be opened."""
    try:
        return read_regular_file(path, MAX_FILE_BYTES, too_large="file too large to be a picture")
    except InputFileError as e:
        raise DecodeError(str(e)) from None


def check_file_size(size: int) -> None:
    """The same byte cap for a picture that is not a file of its own (a member of a tar shard)."""
    if size > MAX_FILE_BYTES:
        raise DecodeError(f"file too large to be a picture ({size:,} bytes)")


def _date_taken(image: Image.Image) -> datetime | None:
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(EXIF_DATE_TAKEN) or exif.get(EXIF_DATETIME)
        return datetime.strptime(str(raw).strip("\x00 "), "%Y:%m:%d %H:%M:%S") if raw else None
    except Exception:  # malformed EXIF is common and never worth failing a picture for
        return None


def decode_picture(data: bytes, min_side: int, max_pixels: int = MAX_PIXELS,
                   max_bytes: int = MAX_DECODE_BYTES) -> DecodedPicture:
    """Bytes of a file → an upright RGB picture, reduced early when it is much larger than needed.

    ``min_side`` is the smallest side the model's preprocess needs; JPEGs are decoded at the
    smallest DCT scale that still covers it (JPEG 2000s at the smallest resolution level), which is
    most of the cost of a 12 MP photo. ``max_bytes`` bounds the memory the decode may take.
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
            turn = orientation(image)
            if turn in (5, 6, 7, 8):
                width, height = height, width
            taken_at = _date_taken(image)
            image = upright(_pixels(data, image, min_side, max_bytes), turn)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's backstop, at twice our limit
        raise DecodeError(f"too many pixels: over the limit of {max_pixels:,}") from e
    except UnidentifiedImageError as e:
        raise DecodeError(_reason(e)) from e
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, IndexError, KeyError) as e:
        # Pillow signals corrupt data through many exception types.
        raise DecodeError(_reason(e)) from e
    return DecodedPicture(image=image, width=width, height=height, taken_at=taken_at)


def _pixels(data: bytes, image: Image.Image, min_side: int, max_bytes: int) -> Image.Image:
    """The picture's RGB pixels as stored (not yet upright), reduced: those of a preview it embeds where one
    will do (``_preview``), else its own."""
    preview = _preview(data, image, min_side)
    if preview is not None:
        try:
            return _reduced(*preview, min_side, max_bytes)
        except Exception:  # a broken preview never fails a good picture: the picture itself decodes as before
            pass
    return _reduced(data, image, min_side, max_bytes)


def _reduced(data: bytes, image: Image.Image, min_side: int, max_bytes: int) -> Image.Image:
    """The opened picture decoded at reduced scale, converted to RGB and shrunk, within ``max_bytes``."""
    stored = image.size
    size, extra = _scale_down(data, image, min_side)
    factor = _shrink_factor(size, min_side)
    _check_memory(image, stored, size, extra, factor, max_bytes)
    return _rgb_shrunk(_load(data, image, min_side), factor)


def _preview(data: bytes, image: Image.Image, min_side: int) -> tuple[bytes, Image.Image] | None:
    """The smallest preview this JPEG embeds that can stand in for it, as (its bytes, it opened), or None.

    A camera's MPF preview (often 1920 pixels wide) decodes in a fraction of the CPU of its 12+ MP
    picture, even at the picture's smallest DCT scale. It stands in when its shorter side covers
    ``min_side`` and its shape is the picture's (a letterboxed or cropped preview would change what the
    model sees); it is stored as the picture is, so the picture's EXIF orientation turns it the same way.
    """
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        return None
    width, height = image.size
    found = None
    for preview in _embedded_jpegs(data, image):
        try:
            opened = Image.open(io.BytesIO(preview), formats=["JPEG"])
        except Exception:  # not a JPEG after all: the picture decodes as usual
            continue
        w, h = opened.size
        same_shape = abs(w * height - h * width) <= ASPECT_TOLERANCE * h * width
        smaller = w * h < (width * height if found is None else found[1].width * found[1].height)
        if min(w, h) >= min_side and same_shape and smaller:
            found = (preview, opened)
    return found


def _embedded_jpegs(data: bytes, image: JpegImagePlugin.JpegImageFile) -> list[bytes]:
    """The previews a JPEG carries, slices of its own bytes: its EXIF thumbnail (IFD1, inside the EXIF
    segment, so at most 64 KB and seldom big enough) and its MPF large thumbnails."""
    found = []
    try:
        thumbnail = image.getexif().get_ifd(ExifTags.IFD.IFD1)
        start = 6 + thumbnail[EXIF_THUMBNAIL_OFFSET]
        found.append(image.info["exif"][start:start + thumbnail[EXIF_THUMBNAIL_LENGTH]])
    except Exception:  # no thumbnail, or malformed EXIF (common): nothing to use
        pass
    entries = getattr(image, "mpinfo", {}).get(0xB002, [])  # Pillow's MpoImageFile: a JPEG with more than one image
    previews = [entry for entry in entries if entry["Attribute"]["MPType"] in MPF_PREVIEWS]
    if previews:
        # MPF offsets count from the MP header in the APP2 segment (Pillow keeps its bytes, not where it was).
        header = data.find(b"MPF\0" + image.info["mp"]) + 4
        found += [data[header + entry["DataOffset"]:header + entry["DataOffset"] + entry["Size"]] for entry in previews]
    return found


def _scale_down(data: bytes, image: Image.Image, min_side: int) -> tuple[tuple[int, int], int]:
    """Set the picture to decode at the smallest scale that still covers ``min_side``, where its format
    allows (JPEG: DCT scaling; JPEG 2000: resolution levels). Returns the size it will decode to and the
    bytes its decode needs beyond the pixels (a progressive JPEG's coefficients, kept at full size;
    OpenJPEG's code-blocks)."""
    if isinstance(image, JpegImagePlugin.JpegImageFile):  # MPO too: phone photos with a gain map or depth
        full = image.size
        image.draft("RGB", (min_side, min_side))
        if not image.info.get("progressive") or not image.layer:
            return image.size, 0
        # libjpeg buffers every DCT coefficient (2 bytes) of every component, at its sampling.
        h_max, v_max = max(c[1] for c in image.layer), max(c[2] for c in image.layer)
        share = sum(c[1] * c[2] for c in image.layer) / (h_max * v_max)
        return image.size, int(2 * full[0] * full[1] * share)
    if image.format == "JPEG2000":
        levels = _j2k_levels(data)
        while levels and min(_j2k_reduced(side, levels) for side in image.size) < min_side:
            levels -= 1
        if levels:
            image.reduce = levels  # Pillow's JPEG 2000 setting: decode that many resolution levels down
        # OpenJPEG holds the code-blocks too: about twice the file (measured), whatever the scale.
        return (_j2k_reduced(image.width, levels), _j2k_reduced(image.height, levels)), 2 * len(data)
    return image.size, 0


def _j2k_reduced(side: int, levels: int) -> int:
    """A side after ``levels`` JPEG 2000 resolution levels, rounded as Pillow sizes it."""
    power = 1 << levels
    return int((side + (power >> 1)) / power)


def _j2k_levels(data: bytes) -> int:
    """The wavelet decomposition levels of a JPEG 2000 codestream (its main header's COD marker); 0 if unknown."""
    position = data.find(b"\xff\x4f\xff\x51") + 2  # SOC, then SIZ: where the main header starts
    while position >= 2 and position + 10 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        if marker == 0x52:  # COD: length, style (1), progression, layers, colour transform (4), then levels
            return data[position + 9]
        if marker in (0x90, 0xD9) or length < 2:  # the first tile, or the end: no COD in the main header
            return 0
        position += 2 + length
    return 0


def _shrink_factor(size: tuple[int, int], min_side: int) -> int:
    """How many times a decoded picture of this size is shrunk: to about twice ``min_side`` when it is at
    least four times that (the model's resize then starts from a sharp picture)."""
    shortest = min(size)
    return shortest // (2 * min_side) if shortest >= 4 * min_side else 1


def _check_memory(image: Image.Image, stored: tuple[int, int], size: tuple[int, int], extra: int, factor: int,
                  max_bytes: int) -> None:
    """Refuse a picture whose decode would take more than ``max_bytes``, counted before decoding: its pixels
    at the ``size`` it decodes to, in the format's own way, the ``extra`` its decoder keeps, the RGB picture
    it becomes and one strip of conversion."""
    width, height = size
    per_pixel = DECODE_BYTES_PER_PIXEL.get(image.format, _storage_bytes(image.mode))
    converted = image.mode != "RGB"
    output = 4 * -(-width // factor) * -(-height // factor) if factor > 1 or converted else 0
    need = width * height * per_pixel + extra + output + (12 * STRIP_PIXELS if converted else 0)
    if need > max_bytes:
        raise DecodeError(f"too large to decode: a {stored[0]}×{stored[1]} {image.mode} {image.format} "
                          f"picture needs about {need / 2**20:,.0f} MB of memory (the limit is "
                          f"{max_bytes / 2**20:,.0f} MB)")


def _storage_bytes(mode: str) -> int:
    """Bytes a pixel of this mode takes in Pillow's memory."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _load(data: bytes, image: Image.Image, min_side: int) -> Image.Image:
    """The opened picture's pixels, at the scale ``_scale_down`` set."""
    scaled = _simplejpeg_scaled(data, image, min_side)
    if scaled is not None:
        return scaled
    image.load()
    return image


def _simplejpeg_scaled(data: bytes, image: Image.Image, min_side: int) -> Image.Image | None:
    """What Pillow's ``draft`` + ``load`` give, pixel for pixel (tested), for ~15 % less CPU on a 12 MP
    photo: both run libjpeg-turbo's scaled decode, Pillow adds its buffering. None where Pillow must
    decide: not a JPEG, simplejpeg not installed, colour spaces other than RGB and grey (CMYK), or any
    complaint (truncated, corrupt), so that Pillow gives the reason. A multi-picture JPEG (Pillow's "MPO": a
    camera's or phone's file with previews or depth maps after the picture) decodes its first picture, the photo.
    """
    if simplejpeg is None or image.format not in ("JPEG", "MPO") or image.mode not in ("RGB", "L"):
        return None
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB" if image.mode == "RGB" else "GRAY",
                                        min_height=min_side, min_width=min_side)
    except ValueError:
        return None
    decoded = Image.fromarray(pixels if image.mode == "RGB" else pixels[..., 0])
    decoded.info = dict(image.info)  # the ICC profile, as Pillow's own decode keeps it
    return decoded


def _rgb_shrunk(image: Image.Image, factor: int) -> Image.Image:
    """``on_white(image).reduce(factor)``, pixel for pixel, converted a strip at a time: a big picture
    never exists as whole-size copies (RGBA, its mask, the canvas), only as itself and the result."""
    if image.mode == "RGB":
        return image.reduce(factor) if factor > 1 else image
    width, height = image.size
    shrunk = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    rows = factor * max(1, STRIP_PIXELS // (width * factor))  # a multiple of the factor: blocks stay whole
    for top in range(0, height, rows):
        strip = on_white(image.crop((0, top, width, min(height, top + rows))))
        shrunk.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return shrunk


def _reason(error: BaseException) -> str:
    if isinstance(error, UnidentifiedImageError):
        return "not a picture (unrecognised format)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "truncated" in text.lower():  # Pillow says "image file is truncated" and "Truncated File Read"
        return f"truncated file ({text})"
    return f"{type(error).__name__}: {text}"
