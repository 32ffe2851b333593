"""How a picture becomes the RGB image every model sees, at indexing, query and training time.

open_clip's own transforms call ``convert("RGB")``, which turns transparent pixels black.
A model trained one way and searched the other loses most of its recall, so every path
(indexer, query, trainer) goes through ``prepare_image`` first, or through its two steps
(``on_white`` and ``upright``) where the decoder shrinks a big picture in between.
"""

from __future__ import annotations

from PIL import Image

BACKGROUND = (255, 255, 255)
PICTURE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
HEIC_EXTENSIONS = frozenset({".heic", ".heif"})
AVIF_EXTENSIONS = frozenset({".avif"})
EXIF_ORIENTATION = 0x0112
# EXIF orientation → the turn that makes the picture upright (as ImageOps.exif_transpose does).
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}

try:  # the `heic` extra: iPhone photos (HEIC/HEIF) open in Pillow only once pillow-heif registers its opener
    from pillow_heif import register_heif_opener
except ImportError:
    HEIC_SUPPORTED = False
else:
    register_heif_opener()
    HEIC_SUPPORTED = True


def picture_extensions() -> frozenset[str]:
    """File extensions of the pictures this installation can decode (HEIC with the `heic` extra, AVIF with a
    Pillow built with libavif): the one list the indexer, the trainer and the page's upload all use."""
    from PIL import features

    extensions = PICTURE_EXTENSIONS | HEIC_EXTENSIONS if HEIC_SUPPORTED else PICTURE_EXTENSIONS
    return extensions | AVIF_EXTENSIONS if features.check("avif") else extensions


def prepare_image(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, any mode to RGB, transparency composited onto white."""
    return on_white(upright(image, orientation(image)))


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = as stored); malformed EXIF, common in the wild, counts as 1."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:
        return 1


def upright(image: Image.Image, orientation: int) -> Image.Image:
    """The picture turned as its EXIF ``orientation`` says (the same object when it needs no turn)."""
    method = UPRIGHT.get(orientation)
    return image.transpose(method) if method is not None else image


def on_white(image: Image.Image) -> Image.Image:
    """Any mode to RGB, transparency composited onto white (the same object when already RGB)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything to white.
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")
