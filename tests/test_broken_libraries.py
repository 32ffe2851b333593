"""Issue 14: every command that opens a library answers a broken or unusable one with one line and exit code 2,
never a traceback, and leaves it exactly as it was: a damaged database (random bytes, cut short), an empty
one, another program's, one newer than this release, one this user may not read, a file given as the
library folder. The API (SearchEngine, the page's way in) raises LibraryError with the same line."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import ROOT, TINY, make_pictures, run_cli_commands
from test_folder_safety import DROP_ROOT_POWERS

from indexer import IndexOptions, Library, index_folders
from indexer.store.schema import SCHEMA_VERSION

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Each command that opens a library, as a user types it; CORPUS is the folder of pictures.
COMMANDS = {
    "index": ("index", "CORPUS", *TINY),
    "query": ("query", "a red circle"),
    "status": ("status", "--failed"),
    "duplicates": ("duplicates",),
    "tag": ("tag", "--labels", "red,blue"),
    "remove": ("remove", "CORPUS"),
    "reindex": ("reindex", "--model", "clipsearch-tiny", "--pretrained", "none"),
    "export": ("export",),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_encoder) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("broken")
    corpus = base / "pictures"
    make_pictures(corpus, 6)
    (corpus / "broken.jpg").write_bytes(b"not a picture")
    library = Library.open(base / "library", create=True)
    index_folders(library, tiny_encoder, [corpus], IndexOptions(workers=0))
    library.store.close()  # closed: no -wal file left beside it
    return corpus, library.folder


@pytest.fixture
def library(made, tmp_path) -> Path:
    folder = tmp_path / "library"
    shutil.copytree(made[1], folder)
    return folder


def contents(folder: Path) -> dict[str, str]:
    """Every file of the library but SQLite's own -wal/-shm, by content; a -wal must hold nothing."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(("-wal", "-shm")):
            assert path.name.endswith("-shm") or path.stat().st_size == 0, f"{path} holds writes"
            continue
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def corrupt(folder: Path) -> tuple[Path, str]:
    (folder / "library.db").write_bytes(random.Random(1).randbytes(64 * 1024))
    return folder, "library.db is damaged (file is not a database): restore it from a backup"


def cut_short(folder: Path) -> tuple[Path, str]:
    db = folder / "library.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    return folder, "library.db is damaged (database disk image is malformed)"


def empty(folder: Path) -> tuple[Path, str]:
    (folder / "library.db").write_bytes(b"")
    return folder, "library.db is empty (0 bytes), not a library"


def foreign(folder: Path) -> tuple[Path, str]:
    (folder / "library.db").unlink()
    connection = sqlite3.connect(folder / "library.db")
    connection.executescript("CREATE TABLE contacts (id INTEGER PRIMARY KEY, name TEXT);"
                             "CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT);"
                             "INSERT INTO contacts (name) VALUES ('someone');")
    connection.close()
    return folder, "is another program's, not a clipsearch library (its tables: contacts, messages)"


def newer(folder: Path) -> tuple[Path, str]:
    connection = sqlite3.connect(folder / "library.db")
    connection.execute(f"UPDATE alembic_version SET version_num = '{SCHEMA_VERSION + 1:04d}'")
    connection.execute("CREATE TABLE from_a_later_release (id INTEGER PRIMARY KEY)")
    connection.commit()
    connection.close()
    return folder, (f"has schema version {SCHEMA_VERSION + 1}, newer than this clipsearch understands "
                    f"(schema {SCHEMA_VERSION}): upgrade clipsearch")


def folder_without_permission(folder: Path) -> tuple[Path, str]:
    folder.chmod(0)
    return folder, f"cannot read the library at {folder}: Permission denied"


def database_without_permission(folder: Path) -> tuple[Path, str]:
    (folder / "library.db").chmod(0)
    return folder, f"cannot read the library at {folder}: Permission denied"


def a_file_as_the_folder(folder: Path) -> tuple[Path, str]:
    return folder / "library.db", "is a file, not a folder: give the folder that holds (or will hold) library.db"


def through_a_file(folder: Path) -> tuple[Path, str]:
    return folder / "library.db" / "inner", "goes through a file, not a folder"


BROKEN: dict[str, Callable[[Path], tuple[Path, str]]] = {
    f.__name__: f for f in (corrupt, cut_short, empty, foreign, newer, folder_without_permission,
                            database_without_permission, a_file_as_the_folder, through_a_file)}
UNPRIVILEGED = {"folder_without_permission", "database_without_permission"}  # root reads them anyway


def run(unprivileged: bool, *args: str) -> subprocess.CompletedProcess:
    prefix = [sys.executable, "-c", DROP_ROOT_POWERS] if unprivileged else [sys.executable]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "default"})


@pytest.mark.parametrize("kind", BROKEN)
def test_every_command_refuses_a_broken_library_with_one_line_and_leaves_it_as_it_was(made, library, kind):
    corpus = made[0]
    unprivileged = kind in UNPRIVILEGED
    if unprivileged:
        private = library.parent / "private"
        private.mkdir(mode=0)
        probe = run(True, "-c", "import os, sys; os.listdir(sys.argv[1])", str(private))
        if "PermissionError" not in probe.stderr:
            pytest.skip(f"this process cannot give up root's power to read any folder: {probe.stderr[-200:]}")
    before = contents(library)
    given, message = BROKEN[kind](library)
    broken = contents(library)  # this process may read it all
    commands = {name: [str(corpus) if a == "CORPUS" else a for a in args] for name, args in COMMANDS.items()}
    try:
        answers = run_cli_commands(given, commands, ("-c", DROP_ROOT_POWERS) if unprivileged else ())
        for name, answer in answers.items():
            assert (answer.returncode, answer.stdout) == (2, ""), (name, answer.stdout, answer.stderr)
            assert answer.stderr.count("\n") == 1 and message in answer.stderr, (name, answer.stderr)
            assert answer.stderr.startswith("LibraryError: " if name == "api" else "error: "), (name, answer.stderr)
        outside = run(unprivileged, "-m", "search.cli", "query", "a red circle", "--library", str(given))
        assert (outside.returncode, outside.stdout) == (2, "") and outside.stderr.count("\n") == 1, outside.stderr
        assert outside.stderr.startswith("error: ") and message in outside.stderr, outside.stderr
    finally:
        library.chmod(0o755)
        if (library / "library.db").is_file():
            (library / "library.db").chmod(0o644)
    assert contents(library) == broken
    faiss_files = {name: digest for name, digest in before.items() if name.startswith("vectors.")}
    assert faiss_files and faiss_files.items() <= broken.items()


def test_a_library_damaged_after_it_was_opened_gives_one_line_too(made, library):
    """Damage found by a later read (a disk error, a copy cut short meanwhile) is a LibraryError, not a trace."""
    from search import SearchEngine

    engine = SearchEngine(library)
    engine.library.store.close()
    with open(library / "library.db", "r+b") as f:
        f.seek(4096)
        f.write(random.Random(2).randbytes(8 * 4096))
    with pytest.raises(Exception) as caught:
        engine.status()
    assert type(caught.value).__name__ == "LibraryError" and "is damaged" in str(caught.value)
