"""Camera-like JPEGs for the decoder's preview path (tests/test_previews.py, bench/decode_bench.py)."""

from __future__ import annotations

import io
import struct

from PIL import Image

FULL_HD_PREVIEW = 0x010002  # MPF's "Large Thumbnail (Full HD Equivalent)"


def set_mp_entry(data: bytes, index: int, mptype: int = FULL_HD_PREVIEW, size: int | None = None,
                 offset: int | None = None) -> bytes:
    """The file with its MPF entry ``index`` rewritten: Pillow writes its extra images as "Undefined",
    where a camera marks its preview as a large thumbnail."""
    entry = Image.open(io.BytesIO(data)).mpinfo[0xB002][index]
    size_and_offset = struct.pack("<LL", entry["Size"], entry["DataOffset"])  # Pillow writes little-endian
    assert data.count(size_and_offset) == 1
    start = data.index(size_and_offset) - 4  # the entry: attribute (with the type), size, offset, two links
    new = struct.pack("<LLL", mptype, size or entry["Size"], entry["DataOffset"] if offset is None else offset)
    return data[:start] + new + data[start + len(new):]


def camera_jpeg(picture: Image.Image, *previews: Image.Image, orientation: int = 1, quality: int = 90,
                exif: Image.Exif | None = None) -> bytes:
    """A JPEG as cameras write them: the picture, then its previews in MPF (Multi-Picture Format).

    ``exif``: further tags it carries (a date), besides the orientation."""
    exif = Image.Exif() if exif is None else exif
    exif[0x0112] = orientation
    out = io.BytesIO()
    picture.save(out, format="MPO", save_all=True, append_images=list(previews), exif=exif.tobytes(),
                 quality=quality)
    data = out.getvalue()
    for index in range(1, len(previews) + 1):
        data = set_mp_entry(data, index)
    assert all(entry["Attribute"]["MPType"] == "Large Thumbnail (Full HD Equivalent)"
               for entry in Image.open(io.BytesIO(data)).mpinfo[0xB002][1:])
    return data
