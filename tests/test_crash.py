"""Issue 5, "any crash": Ctrl-C keeps the work and says how to resume (exit 130); `kill -9` at many random
points, then one more run, ends exactly as an uninterrupted run: every good file once, the vectors of
an uninterrupted run, and a FAISS file that matches the rows."""

from __future__ import annotations

import os
import random
import shutil
import signal
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import (
    TINY,
    HeldIndex,
    both_backends,
    draw_picture,
    library_rows,
    make_pictures,
    rows_committed,
    run_cli,
)

import indexer

pytestmark = pytest.mark.timeout(400)
BATCH = ("--batch-size", "4")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("crash") / "pictures"
    make_pictures(folder / "a", 60)
    make_pictures(folder / "b", 30, start=60, ext="jpg")
    shutil.copy(folder / "a" / "pic000.png", folder / "b" / "same_as_pic000.png")
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    draw_picture(500, (600, 400)).save(folder / "b" / "bigger.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory, tiny_encoder) -> dict:
    """The library an uninterrupted run makes."""
    folder = tmp_path_factory.mktemp("reference")
    library = indexer.Library.open(folder, create=True)
    indexer.index_folders(library, tiny_encoder, [corpus], indexer.IndexOptions(batch_size=4))
    return library_state(folder)


def library_state(folder: Path) -> dict[str, tuple]:
    """path → (status, error, vector) after checking the FAISS file on disk matches the rows exactly."""
    library = indexer.Library.open(folder)
    record = library.model
    rows = library_rows(library)
    paths = [r.path for r in rows]
    assert len(paths) == len(set(paths))
    assert record.index_generation == record.generation, "the saved FAISS file is not the current generation"
    saved = sorted(p.name for p in folder.glob("*vectors*"))
    assert saved == [f"vectors.{record.generation}.faiss"], saved  # no stale versions, no temp files
    index = faiss.read_index(str(folder / saved[0]))
    ok = {r.id: r for r in rows if r.status == indexer.OK}
    ids = faiss.vector_to_array(index.id_map)
    assert sorted(ids.tolist()) == sorted(ok)
    for picture_id, row in ok.items():
        assert np.array_equal(index.reconstruct(int(picture_id)), np.frombuffer(row.vector, dtype=np.float32))
    return {r.path: (r.status, r.error, None if r.vector is None else np.frombuffer(r.vector, np.float32))
            for r in rows}


def assert_same(state: dict, reference: dict) -> None:
    assert state.keys() == reference.keys()
    for path, (status, error, vector) in reference.items():
        got = state[path]
        assert (got[0], got[1]) == (status, error), path
        if vector is not None:
            np.testing.assert_allclose(got[2], vector, atol=1e-5, err_msg=path)


@both_backends
def test_ctrl_c_keeps_work_and_says_how_to_resume(corpus, reference, tmp_path):
    library = tmp_path / "lib"
    run = HeldIndex(tmp_path / "run", str(corpus), "--library", str(library), *TINY, *BATCH)
    run.wait_held()  # its first batch committed, the rest to do
    process = run.process
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "run the same command again" in err
    assert "Traceback" not in err
    kept = rows_committed(library)
    assert kept > 0
    run_cli("index", str(corpus), "--library", str(library), *TINY, *BATCH, check=True)
    assert_same(library_state(library), reference)


def _forked_run(encoder, corpus: Path, library: Path) -> int:
    """`index_folders` in a forked child (no interpreter start-up, so kills land inside the work)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            import torch

            torch.set_num_threads(1)
            lib = indexer.Library.open(library, create=True)
            indexer.index_folders(lib, encoder, [corpus], indexer.IndexOptions(batch_size=4, workers=1))
            code = 0
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@both_backends
def test_kill_9_at_many_random_points(corpus, reference, tmp_path, tiny_encoder, next_library):
    rng = random.Random(int(os.environ.get("CLIPSEARCH_CRASH_SEED", "5")))
    started = time.monotonic()
    assert _wait(_forked_run(tiny_encoder, corpus, tmp_path / "timing")) == 0
    duration = time.monotonic() - started
    kills, min_kills = 0, int(os.environ.get("CLIPSEARCH_CRASH_KILLS", "10"))
    # Rounds go on until enough kills have landed: a run can finish before its kill (the timing run
    # above is the coldest, so later runs are quicker than it predicts).
    for round_ in range(10):
        if round_ >= 4 and kills >= min_kills:
            break
        library = tmp_path / f"lib{round_}"
        next_library()
        for _ in range(6):
            remaining = 1 - rows_committed(library) / len(reference)  # aim the kill inside the work left
            forked = time.monotonic()
            pid = _forked_run(tiny_encoder, corpus, library)
            time.sleep(rng.uniform(0.0, duration * max(remaining, 0.15)))
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                assert os.waitstatus_to_exitcode(status) == 0
                # Finished before its kill: the timing run met a busier machine than runs meet now, so later
                # kills aim by this quicker run's time.
                duration = min(duration, (time.monotonic() - forked) / max(remaining, 0.15))
                break
            os.kill(pid, signal.SIGKILL)
            code = _wait(pid)
            assert code in (0, -signal.SIGKILL)  # it may have finished just before the kill
            if code == 0:
                break
            kills += 1
        if round_ == 0:  # the last run as a user makes it
            run_cli("index", str(corpus), "--library", str(library), *TINY, *BATCH, check=True)
        else:
            assert _wait(_forked_run(tiny_encoder, corpus, library)) == 0
        assert_same(library_state(library), reference)
    assert kills >= min_kills


@both_backends
def test_kill_9_of_the_cli_leaves_no_orphans_and_completes(corpus, reference, tmp_path):
    psutil = pytest.importorskip("psutil")

    library = tmp_path / "lib"
    rng = random.Random(11)
    for kill in range(int(os.environ.get("CLIPSEARCH_CLI_KILLS", "1"))):
        # Held after a random batch among those certainly left (a batch holds at most 16 rows at --batch-size 4),
        # so the kill lands while the run has work, its decode workers alive.
        left = len(reference) - rows_committed(library)
        if left < 16:
            break
        run = HeldIndex(tmp_path / f"run{kill}", str(corpus), "--library", str(library), *TINY, *BATCH,
                        hold_after=rng.randint(1, left // 16))
        run.wait_held()
        workers = psutil.Process(run.process.pid).children(recursive=True)
        assert workers, "the run has no decode workers to orphan"
        run.process.kill()
        run.process.communicate()
        gone, alive = psutil.wait_procs(workers, timeout=10)
        assert not alive, "decode workers outlived their killed parent"
    run_cli("index", str(corpus), "--library", str(library), *TINY, *BATCH, check=True)
    assert_same(library_state(library), reference)
