"""Issue 5, "under fire": queries while indexing writes, two writers at once, a full disk, a read-only library."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, HeldIndex, both_backends, library_rows, make_pictures, run_cli

import indexer

pytestmark = pytest.mark.timeout(400)


@both_backends
def test_queries_while_indexing_never_fail_or_see_torn_state(tmp_path, tiny_encoder):
    from search.engine import SearchEngine

    corpus = tmp_path / "pictures"
    make_pictures(corpus / "first", 20)
    library = tmp_path / "lib"
    indexer.index_folders(indexer.Library.open(library, create=True), tiny_encoder, [corpus])
    make_pictures(corpus / "second", 80, start=100)
    writer = HeldIndex(tmp_path / "writer", str(corpus), "--library", str(library), *TINY, "--batch-size", "4",
                       hold_after=3)
    engine = SearchEngine(library, encoder=tiny_encoder)
    generations = set()
    query_vector = tiny_encoder.encode_texts(["a red circle"])[0]

    def query_and_check():
        results = engine.query(text="a red circle", top_k=50)
        generations.add(engine.vectors.generation)
        assert results, "a library with pictures never answers nothing"
        assert len({r.id for r in results}) == len(results)
        rows = engine.library.store.reads.pictures((r.id for r in results), vectors=True)
        for r in results:
            assert Path(r.path).is_relative_to(corpus)
            # the FAISS vector behind each score is the database's vector for that row: nothing torn
            stored = np.frombuffer(rows[r.id].vector, dtype=np.float32)
            assert abs(float(stored @ query_vector) - r.score) < 1e-4
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True)

    writer.wait_held()
    for _ in range(3):  # mid-run: new rows committed, the FAISS file not saved since
        query_and_check()
    writer.release()
    while writer.process.poll() is None:  # and while it writes on
        query_and_check()
    _, err = writer.process.communicate()
    assert writer.process.returncode == 0, err
    query_and_check()
    assert len(generations) > 1, "the queries did not see the library before and after the writes"
    assert len(engine.query(text="a red circle", top_k=500)) == 100


@both_backends
def test_second_writer_is_refused_clearly(tmp_path, tiny_encoder):
    corpus = tmp_path / "pictures"
    make_pictures(corpus, 80)
    library = tmp_path / "lib"
    first = HeldIndex(tmp_path / "first", str(corpus), "--library", str(library), *TINY, "--batch-size", "4")
    first.wait_held()  # it holds the library (from before its first row) and has more to write
    # an in-process writer is refused at once, and told who holds the library
    with pytest.raises(indexer.LibraryBusy, match=rf"process {first.process.pid}\b"):
        indexer.index_folders(indexer.Library.open(library), tiny_encoder, [corpus])
    # a second CLI run: exit code 2 and one clear line
    second = run_cli("index", str(corpus), "--library", str(library), *TINY)
    assert second.returncode == 2, second.stderr
    assert "another `search index`" in second.stderr and "Traceback" not in second.stderr
    first.release()
    _, err = first.process.communicate(timeout=300)
    assert first.process.returncode == 0, err
    lib = indexer.Library.open(library)
    assert lib.store.reads.counts() == {"pictures": 80, "failed": 0}
    assert lib.vector_index().ntotal == 80


@both_backends
def test_waiting_writer_gets_the_library_when_it_is_free(tmp_path, tiny_encoder):
    library = indexer.Library.open(tmp_path / "lib", create=True)
    other = indexer.Library.open(tmp_path / "lib")
    entered, order = threading.Event(), []

    def hold():
        with library.writer_lock():
            entered.set()
            time.sleep(1.0)  # the other writer is waiting meanwhile
            order.append("first writer done")

    holder = threading.Thread(target=hold)
    holder.start()
    assert entered.wait(10)
    with other.writer_lock(wait=30):
        order.append("second writer in")
    holder.join()
    assert order == ["first writer done", "second writer in"]


# -- full disk, read-only folder: needs root to mount a small tmpfs -----------------------------------


@pytest.fixture
def small_mount(tmp_path):
    point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    point.mkdir()

    def mount(size: str) -> Path:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        return point

    yield mount
    subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _consistent(library: Path) -> int:
    lib = indexer.Library.open(library)
    try:
        rows = library_rows(lib, indexer.OK)
        index = lib.vector_index()
        assert index.ntotal == len(rows)
        return len(rows)
    finally:
        lib.store.close()


def _index(library: Path, corpus: Path, encoder) -> indexer.IndexSummary:
    lib = indexer.Library.open(library, create=True)
    try:
        return indexer.index_folders(lib, encoder, [corpus])
    finally:
        lib.store.close()  # no database file left open here (a busy mount cannot be remounted)


def test_disk_full_gives_a_clear_message_and_keeps_the_library(tmp_path, small_mount, tiny_encoder):
    mount = small_mount("3m")
    library = mount / "lib"
    corpus = tmp_path / "pictures"
    make_pictures(corpus / "a", 10)
    _index(library, corpus, tiny_encoder)
    before = _consistent(library)
    make_pictures(corpus / "b", 60, start=10)
    filler = mount / "filler"
    with open(filler, "wb") as f:  # leave almost nothing free
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    result = run_cli("index", str(corpus), "--library", str(library), *TINY, "--batch-size", "8")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "full" in result.stderr and "Traceback" not in result.stderr
    filler.unlink()
    assert _consistent(library) >= before  # what was committed is intact, nothing half-written
    assert _index(library, corpus, tiny_encoder).failed == 0
    assert _consistent(library) == 70


def test_read_only_library_gives_a_clear_message_and_is_left_as_it_was(tmp_path, small_mount, tiny_encoder):
    mount = small_mount("20m")
    library = mount / "lib"
    corpus = tmp_path / "pictures"
    make_pictures(corpus, 6)
    _index(library, corpus, tiny_encoder)
    make_pictures(corpus, 4, start=50)
    before = _fingerprint(library)
    remount = subprocess.run(["mount", "-o", "remount,ro", str(mount)], capture_output=True, text=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
    result = run_cli("index", str(corpus), "--library", str(library), *TINY)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "read-only" in result.stderr and "Traceback" not in result.stderr
    assert _fingerprint(library) == before


@both_backends
def test_a_killed_writers_children_do_not_turn_the_next_run_away(tmp_path, monkeypatch):
    """A writer killed mid-run leaves decode workers that share its lock for a moment (the lock file's
    descriptor, or the connection holding PostgreSQL's advisory lock); running the same command again right
    away gets the library once they are gone, instead of being refused."""
    import types

    import indexer.store.lock as lock

    library = indexer.Library.open(tmp_path / "lib", create=True)
    release = tmp_path / "release"
    code = """
import os, sys, time
from pathlib import Path
from indexer.store import open_store
folder, release = Path(sys.argv[1]), Path(sys.argv[2])
held = open_store(folder).writer_lock(folder)  # kept: collected, it would release the lock on the spot
held.__enter__()
if os.fork() == 0:  # a decode worker: holds the inherited lock until the test lets it exit
    os.close(1), os.close(2)  # not the test's pipes: only the lock
    deadline = time.monotonic() + 120
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os._exit(0)
print("locked", flush=True)
os._exit(0)  # the writer dies (as with kill -9), its child still holding the lock
"""
    # The next writer finds the library locked by a dead writer's child: the child exits when the writer,
    # waiting its grace, first sleeps.
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        release.touch()
        time.sleep(seconds)

    monkeypatch.setattr(lock, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    try:
        writer = subprocess.run([sys.executable, "-c", code, str(library.folder), str(release)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert writer.stdout.strip() == "locked"
        with library.writer_lock(wait=0):
            pass
    finally:
        release.touch()  # never leave the child waiting
    assert waits, "the lock was free at once: the test did not arrange the dying child"
