"""Nothing unseen is deleted: unreadable folders (permission denied, I/O error, a symlinked folder whose target is
gone) keep their rows."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, draw_picture, make_pictures, run_cli
from sqlalchemy import inspect, select
from test_index import assert_faiss_matches_db

from indexer import OK, IndexOptions, Library, index_folders
from indexer.scan import ScannedFile, UnreadableFolder, scan
from indexer.store import Picture, UnreadableFolderRecord
from search import SearchEngine

FAST = IndexOptions(workers=0, batch_size=2)

# Runs the command after it without the capabilities that let root open any folder (CAP_DAC_OVERRIDE,
# CAP_DAC_READ_SEARCH), so permission bits bind it as they bind any user. It keeps uid 0: `nobody` cannot even
# start this interpreter, which lives under /root (mode 0700). prctl(PR_CAPBSET_DROP) only shapes the next
# execve, hence the exec; without root the prctl fails and is not needed.
DROP_ROOT_POWERS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    libc.prctl(24, capability, 0, 0, 0)  # PR_CAPBSET_DROP
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def run_unprivileged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DROP_ROOT_POWERS, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def rows(library: Library) -> dict[str, Picture]:
    with library.store.session() as s:
        return {row.path: row for row in s.scalars(select(Picture))}


def assert_rows_answer(library: Library, paths: list[Path]) -> None:
    """Each of these rows is embedded, and FAISS finds it first for its own vector."""
    held = rows(library)
    engine = SearchEngine(library.folder)
    for path in paths:
        row = held[str(path)]
        assert row.status == OK and row.vector is not None
        top = engine.search_vector(np.frombuffer(row.vector, dtype=np.float32), top_k=1)[0]
        assert top.path == str(path) and top.score == pytest.approx(1.0, abs=1e-5)


@pytest.fixture
def library(tmp_path):
    return Library.open(tmp_path / "lib", create=True)


@pytest.fixture
def photos(tmp_path):
    """photos/: 2 pictures, and 3 in each of a/, b/ and c/."""
    root = tmp_path / "photos"
    make_pictures(root, 2)
    for n, name in enumerate("abc"):
        make_pictures(root / name, 3, start=10 * (n + 1))
    return root


def test_an_io_error_on_a_folder_keeps_its_rows_until_it_reads_again(photos, library, tiny_encoder, monkeypatch):
    index_folders(library, tiny_encoder, [photos], FAST)
    failing = photos / "b"
    kept = sorted(failing.iterdir())
    kept[0].unlink()  # deleted while its folder cannot be read: unknown to the run, so kept
    (photos / "pic000.png").unlink()  # deleted in a folder that was read: gone
    shutil.rmtree(photos / "c")  # a whole folder gone from a folder that was read: gone
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(failing):
            raise OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the scan lists folders with it
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.removed, summary.added, summary.pictures_kept) == (4, 0, 3)
    assert summary.unreadable_folders == [{"path": str(failing), "error": "Input/output error", "pictures_kept": 3}]
    assert sorted(rows(library)) == sorted(str(p) for p in [photos / "pic001.png", *(photos / "a").iterdir(), *kept])
    assert_rows_answer(library, kept)
    assert_faiss_matches_db(library)
    status = SearchEngine(library.folder).status()
    assert status["unreadable_folders"] == summary.unreadable_folders and status["pictures_kept"] == 3

    monkeypatch.undo()  # the disk answers again: the run brings the library in step
    again = index_folders(library, tiny_encoder, [photos], FAST)
    assert (again.removed, again.unreadable_folders, again.pictures_kept) == (1, [], 0)
    assert str(kept[0]) not in rows(library) and len(rows(library)) == 1 + 3 + 2
    assert SearchEngine(library.folder).status()["unreadable_folders"] == []
    assert_faiss_matches_db(library)


def test_a_folder_without_permission_through_the_cli_as_an_unprivileged_user(photos, library, tiny_encoder):
    private = photos / "b"
    index_folders(library, tiny_encoder, [photos], FAST)
    kept = sorted(private.iterdir())
    kept[0].unlink()
    draw_picture(90).save(photos / "new.png")
    private.chmod(0)
    try:
        probe = run_unprivileged("-c", "import os, sys; os.listdir(sys.argv[1])", str(private))
        if "PermissionError" not in probe.stderr:
            pytest.skip(f"this process cannot give up root's power to read any folder: {probe.stderr[-200:]}")
        args = ("index", str(photos), "--library", str(library.folder), *TINY, "--workers", "0")
        result = run_unprivileged("-m", "search.cli", *args, "--json")
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        summary = json.loads(result.stdout)
        assert (summary["added"], summary["removed"], summary["pictures_kept"]) == (1, 0, 3)
        assert summary["unreadable_folders"] == [{"path": str(private), "error": "Permission denied",
                                                  "pictures_kept": 3}]
        text = run_unprivileged("-m", "search.cli", *args)
        assert text.returncode == 0, text.stderr
        assert "1 folder could not be read; its 3 pictures were kept" in text.stdout
        assert f"{private}: Permission denied (3 kept)" in text.stdout
    finally:
        private.chmod(0o755)
    assert_rows_answer(library, kept)
    assert_faiss_matches_db(library)

    status = json.loads(run_cli("status", "--library", str(library.folder), "--json", check=True).stdout)
    assert status["unreadable_folders"] == summary["unreadable_folders"] and status["pictures_kept"] == 3
    assert status["pictures"] == 12
    shown = run_cli("status", "--library", str(library.folder), check=True).stdout
    assert "unreadable: 1 folder could not be read; its 3 pictures were kept" in shown
    assert f"  {private}: Permission denied (3 kept)" in shown

    readable = json.loads(run_cli("index", str(photos), "--library", str(library.folder), "--json",
                                  check=True).stdout)
    assert (readable["removed"], readable["unreadable_folders"], readable["pictures_kept"]) == (1, [], 0)
    assert "unreadable" not in run_cli("status", "--library", str(library.folder), check=True).stdout
    assert library.store.counts()["pictures"] == 11 and SearchEngine(library.folder).status()["pictures_kept"] == 0


def test_a_symlinked_folder_whose_target_is_gone(photos, library, tiny_encoder, tmp_path):
    disk = tmp_path / "disk"
    on_disk = make_pictures(disk, 3, start=70)
    linked = photos / "camera"
    linked.symlink_to(disk, target_is_directory=True)
    index_folders(library, tiny_encoder, [photos], FAST)
    assert len(rows(library)) == 14

    disk.rename(tmp_path / "unplugged")
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.removed, summary.pictures_kept) == (0, 3)
    assert summary.unreadable_folders == [{"path": str(linked), "error": "broken symbolic link (No such file or "
                                           "directory)", "pictures_kept": 3}]
    assert_rows_answer(library, [linked / p.name for p in on_disk])
    other = make_pictures(tmp_path / "other", 1)[0].parent
    index_folders(library, tiny_encoder, [other], FAST)  # a run over another root leaves this one's record alone
    status = SearchEngine(library.folder).status()
    assert (status["unreadable_folders"], status["pictures_kept"]) == (summary.unreadable_folders, 3)

    (tmp_path / "unplugged").rename(disk)  # plugged in again, with one picture deleted meanwhile
    on_disk[1].unlink()
    again = index_folders(library, tiny_encoder, [photos], FAST)
    assert (again.removed, again.unreadable_folders) == (1, [])
    assert sorted(p for p in rows(library) if p.startswith(str(linked))) == [str(linked / on_disk[0].name),
                                                                              str(linked / on_disk[2].name)]
    assert_faiss_matches_db(library)


def test_an_unreadable_root_keeps_everything(photos, library, tiny_encoder, monkeypatch):
    index_folders(library, tiny_encoder, [photos], FAST)

    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(photos):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # the scan lists folders with it
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.removed, summary.pictures_kept, len(rows(library))) == (0, 11, 11)
    assert [f["path"] for f in summary.unreadable_folders] == [str(photos)]


def test_libraries_made_before_the_record_of_unreadable_folders(photos, library, tiny_encoder):
    """Readers of an older library see no unreadable folders; the next index run adds the table."""
    index_folders(library, tiny_encoder, [photos], FAST)
    UnreadableFolderRecord.__table__.drop(library.store.engine)
    status = SearchEngine(library.folder).status()
    assert (status["unreadable_folders"], status["pictures_kept"], status["pictures"]) == ([], 0, 11)
    index_folders(Library.open(library.folder), tiny_encoder, [photos], FAST)  # a writer, opened without create
    assert inspect(library.store.engine).has_table(UnreadableFolderRecord.__tablename__)


def test_scan_reports_what_it_could_not_read(tmp_path):
    """The scan's own contract: unreadable folders and unstat-able entries are reported, never silently
    dropped; a broken link to a picture is still a file (recorded as failed)."""
    root = tmp_path / "photos"
    make_pictures(root / "ok", 1)
    (root / "gone").symlink_to(tmp_path / "nowhere", target_is_directory=True)
    (root / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    found = list(scan([str(root)]))
    unreadable = [f for f in found if isinstance(f, UnreadableFolder)]
    assert [(f.path, f.error) for f in unreadable] == [(str(root / "gone"),
                                                        "broken symbolic link (No such file or directory)")]
    files = {Path(f.path).name: f for f in found if isinstance(f, ScannedFile)}
    assert set(files) == {"gone.jpg", "pic000.png"} and "broken symbolic link" in files["gone.jpg"].problem
