"""A library.db written by someone else, whose rows lead outside its folders: the page reads none of those files.

The rows are written straight into the database with sqlite3, as another local user could:
one naming a private file, one reaching it through `..`, one through a symlink placed inside
an indexed folder. Each gets a stored vector, so searches return it; its card says why there
is no picture, and no thumbnail, large view or "more like this" ever reads the private file.
"""

from __future__ import annotations

import os
import sqlite3

import pytest
from PIL import Image, ImageDraw

pytest.importorskip("streamlit")
from app_helpers import COLOURS, make_pictures, open_app, result_names, texts  # noqa: E402

from encoders import ModelSpec, load_encoder  # noqa: E402
from indexer import Library, index_folders  # noqa: E402
from search.web import thumbnails  # noqa: E402
from search.web.thumbnails import GRID_SIZE, PreviewError, Thumbnails  # noqa: E402

OUTSIDE = "is not shown: it lies outside the folders this library indexes"


@pytest.fixture
def crafted(tmp_path):
    pictures = make_pictures(tmp_path / "pictures", COLOURS[:4])
    lib = Library.open(tmp_path / "library", create=True)
    index_folders(lib, load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None)), [tmp_path / "pictures"])

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.png"
    image = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(image).text((10, 40), "PRIVATE", fill="black")
    image.save(secret)
    link = tmp_path / "pictures" / "shapes" / "innocent.png"
    link.symlink_to(secret)
    paths = [secret, tmp_path / "pictures" / ".." / "private" / "secret.png", link]

    st = secret.stat()
    with sqlite3.connect(tmp_path / "library" / "library.db") as db:
        (vector,) = db.execute("SELECT vector FROM pictures WHERE status = 'ok' LIMIT 1").fetchone()
        for path in paths:
            db.execute("INSERT INTO pictures (path, size, mtime_ns, width, height, status, vector, indexed_at) "
                       "VALUES (?, ?, ?, 120, 90, 'ok', ?, '2024-01-01 00:00:00')",
                       (os.fsencode(str(path)), st.st_size, st.st_mtime_ns, vector))
        ids = {path: db.execute("SELECT id FROM pictures WHERE path = ?", (os.fsencode(str(path)),)).fetchone()[0]
               for path in paths}
    return {"dir": tmp_path / "library", "pictures": pictures, "secret": secret, "ids": ids}


@pytest.fixture
def reads(monkeypatch):
    """Every file the page's previews read, by real path."""
    seen = []
    real_read = thumbnails.read_file

    def spy(path):
        seen.append(os.path.realpath(path))
        return real_read(path)

    monkeypatch.setattr(thumbnails, "read_file", spy)
    return seen


def test_outside_rows_get_a_note_and_no_picture(monkeypatch, crafted, reads):
    at = open_app(monkeypatch, crafted["dir"])
    at.text_input(key="q").input("anything").run()
    assert not at.exception and not at.error
    assert len(result_names(at)) == 7 and len(at.image) == 4
    notes = texts(at.warning)
    for path, row_id in crafted["ids"].items():
        assert f"{path} {OUTSIDE}" in notes
        assert not list((crafted["dir"] / "thumbs").glob(f"{row_id}-*"))
    assert str(crafted["secret"]) not in reads and len(reads) == 4

    link = crafted["pictures"][0].parent / "innocent.png"
    at.button(key=f"view-{crafted['ids'][link]}").click().run()  # the large view
    assert not at.exception and len(at.image) == 4
    assert f"{link} {OUTSIDE}" in texts(at.warning)

    at.button(key=f"more-{crafted['ids'][crafted['secret']]}").click().run()  # more like this
    assert not at.exception and result_names(at) == []
    assert f"{crafted['secret']} {OUTSIDE}" in texts(at.warning)
    assert str(crafted["secret"]) not in reads


def test_thumbnails_refuse_outside_rows_even_when_a_preview_waits_in_the_cache(crafted, tmp_path, reads):
    thumbs = Thumbnails(Library.open(crafted["dir"]), folder=tmp_path / "thumbs")
    st = crafted["secret"].stat()
    for row_id in crafted["ids"].values():
        planted = tmp_path / "thumbs" / f"{row_id}-{GRID_SIZE}-{st.st_size}-{st.st_mtime_ns}.jpg"
        planted.parent.mkdir(exist_ok=True)
        Image.open(crafted["secret"]).convert("RGB").save(planted)
        with pytest.raises(PreviewError, match=OUTSIDE):
            thumbs.get(row_id)
    page = thumbs.get_many(list(crafted["ids"].values()))
    assert all(isinstance(v, PreviewError) and OUTSIDE in str(v) for v in page.values())
    assert thumbs.made == 0 and reads == []


def test_a_library_inside_a_symlinked_folder_is_served(monkeypatch, tmp_path):
    """Real paths on both sides: a root reached through a symlink (~/Pictures → /data/pics) is still inside."""
    make_pictures(tmp_path / "data" / "pics", COLOURS[:2])
    (tmp_path / "Pictures").symlink_to(tmp_path / "data" / "pics")
    lib = Library.open(tmp_path / "library", create=True)
    index_folders(lib, load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None)), [tmp_path / "Pictures"])
    at = open_app(monkeypatch, tmp_path / "library")
    at.text_input(key="q").input("anything").run()
    assert len(result_names(at)) == 2 and len(at.image) == 2 and not at.warning
