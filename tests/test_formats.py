"""Picture formats beyond Pillow's own: HEIC/HEIF photos (iPhones) through the `heic` extra."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, draw_picture, make_pictures, run_cli

pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif not installed (pip install -e '.[heic]')")


def write_heic(path, seed: int) -> None:
    """A real HEIC file, encoded by libheif through pillow-heif (not a renamed JPEG)."""
    heif = pillow_heif.from_pillow(draw_picture(seed, size=(160, 120)))
    heif.save(str(path), quality=90)


def test_heic_photos_are_indexed_found_and_previewed(tmp_path):
    from encoders import picture_extensions
    from indexer import decode_picture
    from search.web.thumbnails import make_preview

    assert {".heic", ".heif"} <= picture_extensions()
    photos = tmp_path / "photos"
    make_pictures(photos, 3)
    phone = photos / "IMG_0001.HEIC"
    write_heic(phone, seed=42)
    assert phone.read_bytes()[4:12] == b"ftypheic"  # an ISO-BMFF HEIC container, as a phone writes

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
