"""The Streamlit search page, driven by Streamlit's own AppTest over a small library made here.

The tiny model has random weights, so text rankings mean nothing: text queries are checked
for structure, and picture queries for self-retrieval (a library picture finds itself first).
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit")
from app_helpers import COLOURS, make_pictures, open_app, result_names, texts  # noqa: E402

from encoders import ModelSpec, load_encoder  # noqa: E402
from indexer import Library, index_folders  # noqa: E402
from search.web.page import (  # noqa: E402
    MAX_UPLOAD_BYTES,
    UploadError,
    check_upload_size,
    human_size,
    library_from_argv,
    read_upload,
)
from search.web.thumbnails import GRID_SIZE, Thumbnails, make_preview  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    return load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None))


@pytest.fixture(scope="module")
def library(tmp_path_factory, encoder):
    root = tmp_path_factory.mktemp("applib")
    pictures = make_pictures(root / "pictures")
    (root / "pictures" / "broken.jpg").write_bytes(b"not a picture at all")
    lib = Library.open(root / "library", create=True)
    index_folders(lib, encoder, [root / "pictures"])
    ids = {p: lib.store.reads.picture_by_path(str(p.absolute())).id for p in pictures}
    return {"dir": root / "library", "pictures": pictures, "ids": ids, "root": root}


def result_scores(at) -> list[float]:
    return [float(m.value.split("**")[1]) for m in at.markdown if m.value.startswith("**") and " · " in m.value]


# -- states --------------------------------------------------------------------------------------


def test_no_library_tells_the_command(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    at = open_app(monkeypatch, missing)
    assert f"search index PATH --library {missing}" in texts(at.code)
    assert "No pictures to search yet" in texts(at.info)
    assert not any(w.key == "q" for w in at.text_input)  # nothing to search in yet
    assert not missing.exists(), "looking at a library must not create one"


def test_a_damaged_library_says_what_is_wrong(monkeypatch, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "library.db").write_bytes(b"this is not a database" * 100)
    at = open_app(monkeypatch, damaged)
    assert "cannot be opened" in texts(at.error) and "damaged" in texts(at.error)
    assert not at.info and not any(w.key == "q" for w in at.text_input)


def test_empty_library_tells_the_command(monkeypatch, tmp_path):
    Library.open(tmp_path / "empty", create=True)
    at = open_app(monkeypatch, tmp_path / "empty")
    assert f"search index PATH --library {tmp_path / 'empty'}" in texts(at.code)
    assert "has no pictures yet" in texts(at.info)


def test_library_from_command_line_wins(monkeypatch, library, tmp_path):
    assert library_from_argv(["--library", "/a"]) == "/a"
    assert library_from_argv(["-x", "--library=/b"]) == "/b"
    assert library_from_argv(["-x"]) is None
    monkeypatch.setattr("sys.argv", ["app.py", "--library", str(library["dir"])])
    at = open_app(monkeypatch, tmp_path / "not-this-one")  # $SEARCH_LIBRARY loses to --library
    assert texts(at.sidebar.code) == str(library["dir"])
    assert "12 pictures" in texts(at.sidebar.markdown)


def test_the_page_serves_only_the_library_it_started_with(monkeypatch, library, tmp_path, encoder):
    """No input opens another library: its location is shown, not editable; a library's path typed as
    words or as the folder filter is only text (a FIFO there would hang the page if it were opened)."""
    other = tmp_path / "other"
    make_pictures(other / "pictures", ["navy", "olive"])
    index_folders(Library.open(other / "library", create=True), encoder, [other / "pictures"])
    trap = tmp_path / "trap"
    os.mkfifo(trap)
    at = open_app(monkeypatch, library["dir"])
    assert sorted(w.key for w in at.text_input) == ["q", "under"]  # the words, and the folder filter
    assert [w.key for w in at.sidebar.text_input] == ["under"]
    assert texts(at.sidebar.code) == str(library["dir"])
    for typed in (str(other / "library"), str(other / "library" / "library.db"), str(trap)):
        at.text_input(key="q").input(typed).run()
        at.sidebar.text_input(key="under").input(typed).run()
        assert not at.exception
        assert "12 pictures" in texts(at.sidebar.markdown) and texts(at.sidebar.code) == str(library["dir"])
    at.sidebar.text_input(key="under").input("").run()
    assert sorted(result_names(at)) == sorted(p.name for p in library["pictures"])


def test_sidebar_shows_the_library(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    sidebar = texts(at.sidebar.markdown)
    assert "12 pictures" in sidebar and "clipsearch-tiny" in sidebar and "Last indexed: 20" in sidebar
    toggle = at.sidebar.toggle(key="show_failed")
    assert "1 file could not be read" in toggle.label
    toggle.set_value(True).run()
    failures = at.sidebar.dataframe[0].value
    assert list(failures["file"]) == [str(library["root"] / "pictures" / "broken.jpg")]


# -- queries ---------------------------------------------------------------------------------


def test_text_query_shows_a_ranked_grid(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("a red circle").run()
    assert not at.exception and not at.error
    names = result_names(at)
    assert sorted(names) == sorted(p.name for p in library["pictures"])  # all 12 (top 20), broken one absent
    scores = result_scores(at)
    assert scores == sorted(scores, reverse=True)
    assert len(at.image) == 12
    assert "12 pictures for “a red circle”, best match first." in texts(at.caption)
    at.sidebar.slider(key="top_k").set_value(5).run()
    assert len(result_names(at)) == 5 and result_scores(at) == scores[:5]


def test_more_like_this_finds_the_picture_first(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("anything").run()
    target = library["pictures"][7]
    at.button(key=f"more-{library['ids'][target]}").click().run()
    assert not at.exception and not at.error
    assert result_names(at)[0] == target.name
    assert result_scores(at)[0] == pytest.approx(1.0, abs=1e-3)
    assert at.text_input(key="q").value == ""  # the words were replaced by the picture
    assert f"Pictures like **{target.name}**" in texts(at.markdown)
    at.button(key="clear-like").click().run()
    assert result_names(at) == [] and not at.error


def test_upload_finds_the_same_picture_first(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    target = library["pictures"][4]  # a PNG
    at.file_uploader[0].upload(target.name, target.read_bytes(), "image/png")
    at.run()
    assert not at.exception and not at.error
    assert result_names(at)[0] == target.name
    assert result_scores(at)[0] > 0.99


def test_words_and_picture_combined_with_a_weight(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("a blue triangle").run()
    text_only = result_names(at)
    target = library["pictures"][9]  # a JPEG
    at.file_uploader[0].upload(target.name, target.read_bytes(), "image/jpeg")
    at.run()
    weight = at.slider(key="picture_weight")
    assert weight.value == 0.5
    assert "for “a blue triangle” and the picture you uploaded" in texts(at.caption)
    weight.set_value(1.0).run()
    assert result_names(at)[0] == target.name and result_scores(at)[0] > 0.99
    at.slider(key="picture_weight").set_value(0.0).run()
    assert result_names(at) == text_only


def test_unreadable_upload_is_a_message(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.file_uploader[0].upload("holiday.jpg", b"\xff\xd8\xff\xe0 this is not really a jpeg", "image/jpeg")
    at.run()
    assert not at.exception
    message = texts(at.error)
    assert message.startswith("“holiday.jpg” cannot be used: ") and "\n" not in message
    assert result_names(at) == []


def test_read_upload_directly():
    buffer = io.BytesIO()
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(buffer, "PNG")
    image = read_upload(buffer.getvalue(), "clear.png", 32)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 255, 255)  # transparency onto white
    with pytest.raises(UploadError, match="empty"):
        read_upload(b"", "nothing.png", 32)
    with pytest.raises(UploadError, match="cannot be used"):
        read_upload(b"GIF89a broken", "bad.gif", 32)
    with pytest.raises(UploadError, match="up to 50 MB"):
        read_upload(b"\0" * (MAX_UPLOAD_BYTES + 1), "huge.png", 32)
    check_upload_size(MAX_UPLOAD_BYTES, "just.png")


def test_oversized_upload_is_refused_before_reading(monkeypatch, library):
    """The uploader's cap is the browser's; a client can send more, so the page checks the size itself."""
    at = open_app(monkeypatch, library["dir"])
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    at.file_uploader[0].upload("padded.png", buffer.getvalue() + b"\0" * MAX_UPLOAD_BYTES, "image/png")
    at.run()
    assert not at.exception
    assert "“padded.png” is 50.0 MB: the page takes pictures up to 50 MB." in texts(at.error)
    assert result_names(at) == []


def test_a_picture_too_big_to_decode_is_one_line(monkeypatch, library):
    """The decoder's bound (here its pixel count: 15000 × 14000 in a small PNG) is shown as one line."""
    at = open_app(monkeypatch, library["dir"])
    buffer = io.BytesIO()
    Image.new("1", (15_000, 14_000)).save(buffer, "PNG")
    at.file_uploader[0].upload("bomb.png", buffer.getvalue(), "image/png")
    at.run()
    assert not at.exception
    message = texts(at.error)
    assert message.startswith("“bomb.png” cannot be used: too many pixels") and "\n" not in message


def test_empty_results_are_explained(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.sidebar.slider(key="min_score").set_value(1.0).run()
    at.text_input(key="q").input("a green square").run()
    assert not at.exception and not at.error
    assert "No pictures match “a green square”. Try to lower the minimum score." in texts(at.info)
    at.sidebar.slider(key="min_score").set_value(0.0).run()
    at.sidebar.text_input(key="under").input(str(library["root"] / "pictures" / "more")).run()
    assert sorted(result_names(at)) == sorted(p.name for p in library["pictures"][8:])
    at.sidebar.text_input(key="under").input("/etc").run()
    assert "clear “Only under this folder”" in texts(at.info)


def test_a_path_typed_as_words_is_only_words(monkeypatch, library):
    """Text from the page never names a file to open: a path in the search box is searched as text."""
    at = open_app(monkeypatch, library["dir"])
    target = library["pictures"][2]
    at.text_input(key="q").input(str(target)).run()
    assert not at.error
    assert result_scores(at)[0] < 0.99  # with the picture's own vector it would score 1.0


def test_sort_by_path_and_date(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("shapes").run()
    at.sidebar.radio(key="sort").set_value("path").run()
    by_path = [str(p) for p in sorted(library["pictures"], key=str)]
    assert result_names(at) == [Path(p).name for p in by_path]
    at.sidebar.radio(key="sort").set_value("date").run()
    assert "newest first" in texts(at.caption) and len(result_names(at)) == 12


def test_model_mismatch_is_a_message(monkeypatch, library, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(library["dir"], copy)
    with sqlite3.connect(copy / "library.db") as db:
        db.execute("UPDATE library SET fingerprint = 'deadbeefdeadbeef'")
    at = open_app(monkeypatch, copy)
    at.text_input(key="q").input("a red circle").run()
    assert not at.exception
    assert "This library was made with another model" in texts(at.error)


def test_view_opens_the_picture_large(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("a red circle").run()
    first = result_names(at)[0]
    target = next(p for p in library["pictures"] if p.name == first)
    at.button(key=f"view-{library['ids'][target]}").click().run()
    assert not at.exception
    assert str(target.absolute()) in texts(at.code)
    facts = texts(at.markdown)
    with Image.open(target) as image:
        assert f"**Dimensions:** {image.width} × {image.height} pixels" in facts
    assert f"**File size:** {human_size(target.stat().st_size)}" in facts


# -- freshness and thumbnails ----------------------------------------------------------------


def test_reindex_while_open_shows_new_pictures(monkeypatch, tmp_path, encoder):
    pictures = make_pictures(tmp_path / "pictures", COLOURS[:4])
    lib = Library.open(tmp_path / "library", create=True)
    index_folders(lib, encoder, [tmp_path / "pictures"])
    at = open_app(monkeypatch, tmp_path / "library")
    at.text_input(key="q").input("colours").run()
    assert len(result_names(at)) == 4 and "4 pictures" in texts(at.sidebar.markdown)

    new = make_pictures(tmp_path / "new", ["navy"])[0]
    moved = tmp_path / "pictures" / "shapes" / "zz-navy.png"
    shutil.move(new, moved)
    index_folders(lib, encoder, [tmp_path / "pictures"])  # as `search index` would, from another process
    at.run()
    assert "5 pictures" in texts(at.sidebar.markdown)
    assert "zz-navy.png" in result_names(at)
    at.button(key=f"more-{lib.store.reads.picture_by_path(str(moved)).id}").click().run()
    assert result_names(at)[0] == "zz-navy.png"
    assert pictures  # the first four are still there
    assert len(result_names(at)) == 5


def test_thumbnails_are_made_once_and_small(library, tmp_path):
    big = tmp_path / "big" / "photo.jpg"
    big.parent.mkdir()
    Image.new("RGB", (4000, 3000), "teal").save(big, quality=80)
    preview = make_preview(big, GRID_SIZE)
    with Image.open(io.BytesIO(preview)) as image:
        assert max(image.size) == GRID_SIZE and image.format == "JPEG"

    lib = Library.open(library["dir"])
    thumbs = Thumbnails(lib, folder=tmp_path / "thumbs")
    ids = list(library["ids"].values())
    first = [thumbs.get(i) for i in ids]
    assert thumbs.made == len(ids) and len(list((tmp_path / "thumbs").glob("*.jpg"))) == len(ids)
    again = Thumbnails(lib, folder=tmp_path / "thumbs")  # e.g. after a server restart
    assert [again.get(i) for i in ids] == first and again.made == 0


def test_thumbnails_serve_only_library_rows(library, tmp_path):
    from search.web.thumbnails import PreviewError

    thumbs = Thumbnails(Library.open(library["dir"]), folder=tmp_path / "thumbs")
    with pytest.raises(PreviewError, match="no longer in the library"):
        thumbs.get(10_000)
    assert thumbs.made == 0


def test_grid_thumbnails_are_cached_on_disk(monkeypatch, library):
    at = open_app(monkeypatch, library["dir"])
    at.text_input(key="q").input("a red circle").run()
    thumbs = library["dir"] / "thumbs"
    made = {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")}
    assert len(made) >= 12
    at.text_input(key="q").input("a yellow square").run()
    assert {p.name: p.stat().st_mtime_ns for p in thumbs.glob("*.jpg")} == made


def test_a_page_of_thumbnails_at_once(library, tmp_path):
    from search.web.thumbnails import PreviewError

    lib = Library.open(library["dir"])
    thumbs = Thumbnails(lib, folder=tmp_path / "thumbs")
    ids = list(library["ids"].values())
    page = thumbs.get_many([*ids, 10_000])
    assert [page[i] for i in ids] == [thumbs.get(i) for i in ids] and thumbs.made == len(ids)
    assert isinstance(page[10_000], PreviewError)


def test_a_vanished_picture_shows_a_note_not_an_error(monkeypatch, tmp_path, encoder):
    pictures = make_pictures(tmp_path / "pictures", COLOURS[:3])
    lib = Library.open(tmp_path / "library", create=True)
    index_folders(lib, encoder, [tmp_path / "pictures"])
    pictures[1].unlink()  # gone since it was indexed
    at = open_app(monkeypatch, tmp_path / "library")
    at.text_input(key="q").input("shapes").run()
    assert not at.exception and not at.error
    assert len(result_names(at)) == 3 and len(at.image) == 2
    assert f"{pictures[1]} cannot be read" in texts(at.warning)
