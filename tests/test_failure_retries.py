"""Issue 14: a failure that may be transient (a decode that timed out, an I/O error while reading) is tried again
by the next runs, at most MAX_RETRIES times while the file stays the same, with the count shown by
`search status --failed`; a permanent one (not a picture, too many pixels, an empty file) waits until the
file changes."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from conftest import draw_picture, make_pictures, run_cli
from test_index import assert_faiss_matches_db, png_declaring

import indexer.prepare as prepare
from indexer import IndexOptions, Library, index_folders
from indexer.store import MAX_RETRIES

pytestmark = pytest.mark.timeout(600)
THREADS = IndexOptions(workers=0)  # decoded in this process, where the test's fault is injected


def failed(library: Library) -> dict[str, dict]:
    return {Path(f["path"]).name: f for f in library.store.reads.failed_files()}


@pytest.fixture
def folder(tmp_path) -> Path:
    pictures = tmp_path / "pictures"
    make_pictures(pictures, 6)
    return pictures


def test_an_io_error_while_reading_is_retried_by_the_next_run(folder, tmp_path, tiny_encoder, monkeypatch):
    (folder / "broken.jpg").write_bytes(b"not a picture")
    flaky = {str(folder / "pic002.png")}
    real_read = prepare.read_file

    def read_file(path):
        if path in flaky:  # the disk fails once on this file
            flaky.discard(path)
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return real_read(path)

    monkeypatch.setattr(prepare, "read_file", read_file)
    library = Library.open(tmp_path / "lib", create=True)
    first = index_folders(library, tiny_encoder, [folder], THREADS)
    assert (first.added, first.failed) == (5, 2)
    assert failed(library) == {
        "broken.jpg": {"path": str(folder / "broken.jpg"), "error": "not a picture (unrecognised format)",
                       "retries": 0, "retry": False},
        "pic002.png": {"path": str(folder / "pic002.png"), "error": "unreadable: Input/output error",
                       "retries": 0, "retry": True}}
    shown = json.loads(run_cli("status", "--failed", "--json", "--library", str(library.folder), check=True).stdout)
    assert {Path(f["path"]).name: f for f in shown["failures"]} == failed(library)
    text = run_cli("status", "--failed", "--library", str(library.folder), check=True).stdout.splitlines()
    assert f"{folder / 'pic002.png'}\tunreadable: Input/output error\t(may be transient: tried again on the next " \
           f"run; retried 0 times so far)" in text
    assert f"{folder / 'broken.jpg'}\tnot a picture (unrecognised format)" in text

    second = index_folders(library, tiny_encoder, [folder], THREADS)
    assert (second.retried, second.updated, second.embedded, second.failed, second.unchanged) == (1, 1, 1, 0, 6)
    assert list(failed(library)) == ["broken.jpg"]
    assert_faiss_matches_db(library)
    third = index_folders(library, tiny_encoder, [folder], THREADS)
    assert (third.retried, third.embedded, third.unchanged) == (0, 0, 7)


def test_a_decode_that_timed_out_is_retried_until_max_retries_then_waits_for_a_change(folder, tmp_path,
                                                                                       tiny_encoder, monkeypatch):
    slow = folder / "pic004.png"
    state = {"slow": True}  # read by the decode processes, forked at each run's start
    real_decode = prepare.decode_picture

    def decode_picture(data, min_side, max_pixels=prepare.MAX_PIXELS):
        if state["slow"] and data == slow.read_bytes():
            time.sleep(60)  # a decoder starved under load
        return real_decode(data, min_side, max_pixels)

    monkeypatch.setattr(prepare, "decode_picture", decode_picture)
    options = IndexOptions(workers=1, decode_timeout=1)
    library = Library.open(tmp_path / "lib", create=True)
    for run in range(1, MAX_RETRIES + 2):  # the first try and MAX_RETRIES retries, all timed out
        summary = index_folders(library, tiny_encoder, [folder], options)
        assert (summary.failed, summary.retried) == (1, 0 if run == 1 else 1), run
        record = failed(library)["pic004.png"]
        assert record["error"].startswith("timed out") and record["retries"] == run - 1, record
        assert record["retry"] is (run <= MAX_RETRIES), record
    text = run_cli("status", "--failed", "--library", str(library.folder), check=True).stdout
    assert f"(retried {MAX_RETRIES} times; now tried again only when the file changes)" in text

    state["slow"] = False
    waiting = index_folders(library, tiny_encoder, [folder], options)
    assert (waiting.retried, waiting.failed, waiting.embedded, waiting.unchanged) == (0, 0, 0, 6)
    assert failed(library)["pic004.png"]["retries"] == MAX_RETRIES
    os.utime(slow, ns=(time.time_ns(), time.time_ns()))  # the file changed (touched): tried again
    changed = index_folders(library, tiny_encoder, [folder], options)
    assert (changed.failed, changed.updated, changed.embedded) == (0, 1, 1)
    assert failed(library) == {}
    assert_faiss_matches_db(library)


def test_permanent_failures_wait_until_the_file_changes(folder, tmp_path, tiny_encoder):
    (folder / "broken.jpg").write_bytes(b"not a picture")
    (folder / "empty.png").write_bytes(b"")
    (folder / "huge.png").write_bytes(png_declaring(20_000, 20_000))
    library = Library.open(tmp_path / "lib", create=True)
    first = index_folders(library, tiny_encoder, [folder], THREADS)
    assert first.failed == 3
    reasons = {name: f["error"] for name, f in failed(library).items()}
    assert "not a picture" in reasons["broken.jpg"] and reasons["empty.png"] == "empty file"
    assert "too many pixels" in reasons["huge.png"]
    assert not any(f["retry"] for f in failed(library).values())
    again = index_folders(library, tiny_encoder, [folder], THREADS)
    assert (again.retried, again.failed, again.embedded, again.unchanged) == (0, 0, 0, 9)

    draw_picture(77).save(folder / "broken.jpg", format="JPEG")  # new bytes: tried again
    fixed = index_folders(library, tiny_encoder, [folder], THREADS)
    assert (fixed.updated, fixed.embedded, fixed.retried) == (1, 1, 0)
    assert sorted(failed(library)) == ["empty.png", "huge.png"]
