"""Issue 14: a finished library that this process cannot write (a read-only mount, another user's folder) answers
every read command: SQLite opened read-only, or immutable where WAL mode cannot open it read-only (no -shm
file and no right to make one); no FAISS file saved, no text tower exported. Writers are refused with one
line."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, make_pictures, run_cli, run_cli_commands
from test_broken_libraries import contents
from test_concurrency import small_mount  # noqa: F401  (the fixture)
from test_folder_safety import DROP_ROOT_POWERS

import encoders.text.export
from indexer import Library, LibraryError, VectorIndex
from indexer.store.schema import SCHEMA_VERSION
from search import SearchEngine

pytestmark = pytest.mark.timeout(600)
READS = {
    "query": ("query", "a red circle", "--json"),
    "query-image": ("query", "--image", "IMAGE", "--top", "3", "--json"),
    "query-filtered": ("query", "a blue square", "--ext", "png", "--top", "4", "--json"),
    "status": ("status", "--failed", "--json"),
    "duplicates": ("duplicates", "--json"),
    "export": ("export",),
}
WRITES = {"index": ("index", "CORPUS", *TINY), "tag": ("tag", "--labels", "red,blue"), "remove": ("remove", "CORPUS")}


def remount(point: Path, mode: str) -> None:
    result = subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot remount {mode}: {result.stderr.strip()}")


def args_for(command: tuple[str, ...], corpus: Path) -> list[str]:
    return [str(corpus) if a == "CORPUS" else str(corpus / "pic003.png") if a == "IMAGE" else a for a in command]


def assert_reads_answer_and_writes_are_refused(library: Path, corpus: Path, prefix: tuple[str, ...] = ()) -> None:
    """Every read command answers as on a writable library (exit 0, no warning, nothing exported); every write
    is refused in one line. All in one process; one real `search query` process besides."""
    commands = {name: args_for(command, corpus) for name, command in {**READS, **WRITES}.items()}
    answers = run_cli_commands(library, commands, prefix)
    answers["query-process"] = subprocess.run([sys.executable, *prefix, "-m", "search.cli", *commands["query"],
                                               "--library", str(library)], capture_output=True, text=True, cwd=ROOT,
                                              timeout=300)
    for name, result in answers.items():
        if name in WRITES:
            assert result.returncode == 2 and "Traceback" not in result.stderr, (name, result.stderr)
            assert "read-only or not writable by this user: nothing was changed" in result.stderr, (name, result.stderr)
            assert result.stderr.count("\n") == 1 + result.stderr.count("RANDOM WEIGHTS"), (name, result.stderr)
            continue
        assert result.returncode == 0, (name, result.stderr)
        noise = [line for line in result.stderr.splitlines() if "RANDOM WEIGHTS" not in line]
        assert noise == [], (name, result.stderr)  # no warning, no "text model exported" note
        if name == "api":
            continue
        output = json.loads(result.stdout)
        if name == "query-image":
            assert output["results"][0]["path"] == str(corpus / "pic003.png")
        elif name.startswith("query"):
            assert len(output["results"]) == (4 if name == "query-filtered" else 10)
        elif name == "status":
            assert (output["read_only"], output["schema"], output["pictures"], output["failed"]) == \
                (True, SCHEMA_VERSION, 12, 1)
            assert [f["path"] for f in output["failures"]] == [str(corpus / "broken.jpg")]
        elif name == "export":
            assert len(output["pictures"]) == 13
        else:
            assert output["groups"] and output["groups"][0]["exact"]  # the copy of pic000


@pytest.fixture
def corpus(tmp_path) -> Path:
    folder = tmp_path / "pictures"
    make_pictures(folder, 11)
    shutil.copy(folder / "pic000.png", folder / "copy.png")
    (folder / "broken.jpg").write_bytes(b"not a picture")
    return folder


def test_a_finished_library_on_a_read_only_mount_answers_every_read_command(tmp_path, small_mount, corpus):  # noqa: F811
    mount = small_mount("96m")
    library = mount / "lib"
    run_cli("index", str(corpus), "--library", str(library), *TINY, check=True)  # exports the text tower too
    assert list(library.glob("text.*.onnx")) and not list(library.glob("*-wal"))
    before = contents(library)
    remount(mount, "ro")
    assert_reads_answer_and_writes_are_refused(library, corpus)
    assert contents(library) == before

    # No FAISS file and no exported tower: readers rebuild in memory and stay on PyTorch, saving nothing.
    remount(mount, "rw")
    for derived in [*library.glob("vectors.*.faiss"), *library.glob("text.*")]:
        derived.unlink()
    before = contents(library)
    remount(mount, "ro")
    assert_reads_answer_and_writes_are_refused(library, corpus)
    assert contents(library) == before


def test_readers_on_a_read_only_mount_never_try_to_write(tmp_path, small_mount, corpus, tiny_encoder,  # noqa: F811
                                                         monkeypatch):
    mount = small_mount("16m")
    run_cli("index", str(corpus), "--library", str(mount / "lib"), *TINY, check=True)
    for saved in mount.glob("lib/vectors.*.faiss"):
        saved.unlink()
    remount(mount, "ro")

    def no_writes(*args, **kwargs):
        raise AssertionError("a reader of a read-only library tried to write")

    monkeypatch.setattr(VectorIndex, "save", no_writes)
    monkeypatch.setattr(encoders.text.export, "export_text_tower", no_writes)
    engine = SearchEngine(mount / "lib", encoder=tiny_encoder)
    assert engine.library.read_only and engine.status()["read_only"]
    assert engine.query(text="a red circle", top_k=3)
    assert engine.vectors.rebuilt and engine.vectors.ntotal == 12
    assert not engine.prepare_text_tower()


def test_another_users_library_is_read_without_writing(tmp_path, corpus):
    """A library folder this user may read but not write, with no -shm file: opened immutable."""
    library = tmp_path / "lib"
    run_cli("index", str(corpus), "--library", str(library), *TINY, check=True)
    files = [library, *library.iterdir()]
    for path in files:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = contents(library)

    try:
        probe = subprocess.run([sys.executable, "-c", DROP_ROOT_POWERS, "-c",
                                "import sys; open(sys.argv[1] + '/probe', 'w')", str(library)],
                               capture_output=True, text=True, timeout=60)
        if "PermissionError" not in probe.stderr:
            pytest.skip(f"this process cannot give up root's power to write any folder: {probe.stderr[-200:]}")
        assert_reads_answer_and_writes_are_refused(library, corpus, ("-c", DROP_ROOT_POWERS))
    finally:
        for path in files:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert contents(library) == before


def test_a_library_left_with_changes_in_its_wal_on_a_read_only_mount_says_so(tmp_path, small_mount, corpus,  # noqa: F811
                                                                               tiny_encoder):
    from indexer import index_folders

    made = Library.open(tmp_path / "lib", create=True)
    index_folders(made, tiny_encoder, [corpus])
    made.store.close()
    mount = small_mount("16m")
    holder = sqlite3.connect(tmp_path / "lib" / "library.db")  # a writer still running when the copy was made
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("INSERT INTO roots (path) VALUES (x'2f6e6577')")
    holder.commit()
    shutil.copytree(tmp_path / "lib", mount / "lib", ignore=shutil.ignore_patterns("*-shm"))
    holder.close()
    assert (mount / "lib" / "library.db-wal").stat().st_size > 0
    remount(mount, "ro")
    with pytest.raises(LibraryError, match="was not closed cleanly and is read-only here: its latest changes are in "
                                           "library.db-wal"):
        Library.open(mount / "lib")
    result = run_cli("status", "--library", str(mount / "lib"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not closed cleanly" in result.stderr
