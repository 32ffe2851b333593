"""Picture formats beyond the common ones: HEIC/HEIF photos (iPhones) through the `heic` extra, and AVIF where
Pillow has libavif; each indexed, found and previewed, and offered by the page's upload (one extension list)."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, draw_picture, make_pictures, run_cli


def write_heic(path, seed: int) -> None:
    """A real HEIC file, encoded by libheif through pillow-heif (not a renamed JPEG)."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif not installed (pip install -e '.[heic]')")
    heif = pillow_heif.from_pillow(draw_picture(seed, size=(160, 120)))
    heif.save(str(path), quality=90)


def write_avif(path, seed: int) -> None:
    """A real AVIF file, encoded by Pillow's libavif."""
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow is built without libavif (AVIF pictures are then neither indexed nor uploaded)")
    draw_picture(seed, size=(160, 120)).save(path, format="AVIF", quality=90)


@pytest.mark.parametrize("name, write, brand", [("IMG_0001.HEIC", write_heic, b"ftypheic"),
                                               ("photo.avif", write_avif, b"ftypavif")])
def test_phone_formats_are_indexed_found_and_previewed(tmp_path, name, write, brand):
    from encoders import picture_extensions
    from indexer import decode_picture
    from search.web.page import UPLOAD_TYPES
    from search.web.thumbnails import make_preview

    photos = tmp_path / "photos"
    make_pictures(photos, 3)
    phone = photos / name
    write(phone, seed=42)
    assert phone.read_bytes()[4:12] == brand  # an ISO-BMFF container, as a phone or an encoder writes
    assert phone.suffix.lower() in picture_extensions() and phone.suffix.lower()[1:] in UPLOAD_TYPES

    picture = decode_picture(phone.read_bytes(), 64)
    assert (picture.width, picture.height) == (160, 120) and picture.image.mode == "RGB"
    assert make_preview(phone, 64)[:2] == b"\xff\xd8"  # the page can show it

    lib = tmp_path / "lib"
    run_cli("index", str(photos), "--library", str(lib), *TINY, check=True)
    status = json.loads(run_cli("status", "--library", str(lib), "--failed", "--json", check=True).stdout)
    assert status["pictures"] == 4 and status["failed"] == 0, status["failures"]
    found = json.loads(run_cli("query", "--image", str(phone), "--library", str(lib), "--json",
                               check=True).stdout)["results"]
    assert found[0]["path"] == str(phone) and (found[0]["width"], found[0]["height"]) == (160, 120)
