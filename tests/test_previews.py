"""Issue 16: a camera JPEG's embedded preview (MPF large thumbnail, EXIF thumbnail) decodes instead of
the picture when it covers the model's size and has the picture's shape; otherwise, or when it is broken,
the picture itself decodes as before.

Each file's preview is another colour than its picture, so the decoded pixels say which one was used.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from camera_helpers import camera_jpeg, set_mp_entry
from PIL import Image

from encoders.decode import decode_picture

PICTURE, PREVIEW, OTHER_PREVIEW = (200, 40, 40), (40, 40, 200), (40, 200, 40)
ROTATE_90_CLOCKWISE = 6  # EXIF orientation: the stored picture is turned a quarter to the left


def solid(colour, size) -> Image.Image:
    return Image.new("RGB", size, colour)


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def exif_with_thumbnail(thumbnail: bytes) -> bytes:
    """EXIF as cameras write it: IFD0 (an orientation of 1), then IFD1 pointing at a JPEG thumbnail."""
    ifd0 = struct.pack("<HHHLL", 1, 0x0112, 3, 1, 1) + struct.pack("<L", 26)  # 8 + 18 bytes: IFD1 at 26
    ifd1 = struct.pack("<HHHLLHHLLL", 2, 0x0201, 4, 1, 56, 0x0202, 4, 1, len(thumbnail), 0)  # 30 bytes: data at 56
    return b"Exif\0\0II*\0" + struct.pack("<L", 8) + ifd0 + ifd1 + thumbnail


def colour(image: Image.Image) -> tuple[int, ...]:
    """The picture's mean colour, rounded to the nearest of ours (JPEG moves them a little)."""
    mean = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
    return min((PICTURE, PREVIEW, OTHER_PREVIEW), key=lambda c: np.abs(mean - c).sum())


@pytest.mark.parametrize(("preview_size", "min_side", "used"), [
    ((400, 300), 224, True),  # covers the model's 224 pixels, same 4:3 shape
    ((400, 302), 224, True),  # 0.7 % off in shape: the model's crop barely moves
    ((400, 300), 301, False),  # too small for the model
    ((400, 225), 200, False),  # 16:9 of a 4:3 picture: the model would see another crop
])
def test_a_preview_stands_in_for_the_picture_when_it_covers_the_model_and_has_its_shape(preview_size, min_side, used):
    data = camera_jpeg(solid(PICTURE, (800, 600)), solid(PREVIEW, preview_size))
    decoded = decode_picture(data, min_side)
    assert colour(decoded.image) == (PREVIEW if used else PICTURE)
    assert min(decoded.image.size) >= min_side
    assert (decoded.width, decoded.height) == (800, 600)  # the picture's, whichever decoded


def test_the_smallest_preview_that_covers_the_model_is_used():
    data = camera_jpeg(solid(PICTURE, (1600, 1200)), solid(PREVIEW, (800, 600)), solid(OTHER_PREVIEW, (400, 300)))
    assert colour(decode_picture(data, 224).image) == OTHER_PREVIEW
    assert colour(decode_picture(data, 400).image) == PREVIEW


def test_a_preview_is_turned_by_the_pictures_orientation():
    """The preview is stored as the picture is: the picture's EXIF orientation turns it, whatever its own says."""
    def halves(top, bottom, size):  # as stored: `top` on the left, turned upright it is on top
        image = solid(bottom, size)
        image.paste(top, (0, 0, size[0] // 2, size[1]))
        return image

    preview = halves(PREVIEW, OTHER_PREVIEW, (400, 300))
    as_stored = Image.Exif()
    as_stored[0x0112] = 1
    preview.encoderinfo = {"exif": as_stored.tobytes()}  # its own EXIF (Pillow's MPO writer would copy the picture's)
    data = camera_jpeg(halves(PICTURE, OTHER_PREVIEW, (800, 600)), preview, orientation=ROTATE_90_CLOCKWISE)
    written = Image.open(io.BytesIO(data))
    assert written.getexif()[0x0112] == ROTATE_90_CLOCKWISE
    written.seek(1)
    assert written.getexif()[0x0112] == 1
    decoded = decode_picture(data, 224)
    width, height = decoded.image.size
    assert height > width and (decoded.width, decoded.height) == (600, 800)
    assert colour(decoded.image.crop((0, 0, width, height // 2))) == PREVIEW
    assert colour(decoded.image.crop((0, height // 2, width, height))) == OTHER_PREVIEW


@pytest.mark.parametrize("broken", ["truncated", "outside the file", "not a JPEG"])
def test_a_broken_preview_falls_back_to_the_picture(broken):
    data = camera_jpeg(solid(PICTURE, (800, 600)), solid(PREVIEW, (400, 300)))
    entry = Image.open(io.BytesIO(data)).mpinfo[0xB002][1]
    if broken == "truncated":  # the preview's header is whole, its pixels are cut short
        data = set_mp_entry(data, 1, size=entry["Size"] // 2)
    elif broken == "outside the file":
        data = set_mp_entry(data, 1, offset=len(data) * 2)
    else:  # the entry points into the picture's own pixels
        data = set_mp_entry(data, 1, offset=entry["DataOffset"] // 2)
    assert colour(decode_picture(data, 224).image) == PICTURE


@pytest.mark.parametrize(("min_side", "used"), [(100, True), (224, False)])
def test_an_exif_thumbnail_is_used_only_where_it_covers_the_model(tmp_path, min_side, used):
    """A camera's EXIF thumbnail (160×120, inside a 64 KB segment) is too small for any real model."""
    out = io.BytesIO()
    solid(PICTURE, (800, 600)).save(out, "JPEG", exif=exif_with_thumbnail(jpeg(solid(PREVIEW, (160, 120)))))
    assert colour(decode_picture(out.getvalue(), min_side).image) == (PREVIEW if used else PICTURE)
