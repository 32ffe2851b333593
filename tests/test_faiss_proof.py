"""Issue 14: the FAISS file proves it belongs to its library. Saving records beside it in the database the
generation, count, dimension and a digest of its ids; loading checks them and a sample of its vectors against
the rows. Another library's valid file of the same size (same ids and other vectors, or other ids) is rebuilt
from the database, never used, by the query engine; a reader that may write saves the rebuilt file, so the next
query loads it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import library_rows, make_pictures, run_cli
from test_index import assert_faiss_matches_db

from indexer import OK, IndexOptions, Library, index_folders
from indexer.indexproof import index_ids, proof_of
from search import SearchEngine

pytestmark = pytest.mark.timeout(600)
FOREIGN = "is not the FAISS index of this library's database"


def indexed(folder: Path, pictures: list[Path], encoder) -> Library:
    library = Library.open(folder, create=True)
    index_folders(library, encoder, [pictures[0].parent], IndexOptions(workers=0, batch_size=4))
    return library


def saved_file(library: Library) -> Path:
    (path,) = library.folder.glob("vectors.*.faiss")
    return path


def brute_force(library: Library, vector: np.ndarray, k: int) -> list[int]:
    rows = library_rows(library, OK)
    scores = {r.id: float(np.frombuffer(r.vector, np.float32) @ vector) for r in rows}
    return sorted(scores, key=lambda i: -scores[i])[:k]


@pytest.fixture
def two(tmp_path, tiny_encoder):
    """Libraries A and B: 10 different pictures each, so the same ids 1..10 and the same file name."""
    ours = indexed(tmp_path / "a", make_pictures(tmp_path / "pics-a", 10), tiny_encoder)
    theirs = indexed(tmp_path / "b", make_pictures(tmp_path / "pics-b", 10, start=100), tiny_encoder)
    assert saved_file(ours).name == saved_file(theirs).name
    return ours, theirs, tmp_path / "pics-a"


def test_saving_records_the_proof_of_the_file(two):
    ours, _, _ = two
    loaded = faiss.read_index(str(saved_file(ours)))
    record = ours.model
    assert record.index_proof() == proof_of(loaded, record.generation)
    assert (record.index_count, record.index_dim) == (10, 128) and len(record.index_ids_digest) == 32


def test_another_librarys_file_with_the_same_ids_is_rebuilt_and_the_next_query_loads_the_saved_one(two, tiny_encoder):
    ours, theirs, pictures = two
    shutil.copy(saved_file(theirs), saved_file(ours))
    swapped = faiss.read_index(str(saved_file(ours)))
    assert (swapped.ntotal, swapped.d) == (10, 128)
    assert np.array_equal(index_ids(swapped), index_ids(faiss.read_index(str(saved_file(theirs)))))  # ids agree
    picture = str(pictures / "pic004.png")

    engine = SearchEngine(ours.folder, encoder=tiny_encoder)
    with pytest.warns(UserWarning, match=FOREIGN):
        results = engine.query(image=picture, top_k=3)
    assert results[0].path == picture and results[0].score == pytest.approx(1.0, abs=1e-5)
    text = tiny_encoder.encode_texts(["a red circle"])[0]
    assert [r.id for r in engine.search_vector(text, top_k=5)] == brute_force(ours, text, 5)

    # The reader saved the rebuilt file with its proof: the next query (no model needed) maps it, with no warning.
    assert saved_file(ours).read_bytes() != saved_file(theirs).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = SearchEngine(ours.folder)
        answer = again.query(image=picture, top_k=3)
    assert not again.vectors.rebuilt and not again.torch_loaded
    assert [(r.id, r.score) for r in answer] == [(r.id, pytest.approx(r.score, abs=1e-6)) for r in results]
    assert_faiss_matches_db(ours)


def test_another_librarys_file_with_other_ids_is_rebuilt(two, tmp_path, tiny_encoder):
    ours, _, pictures = two
    other_pictures = make_pictures(tmp_path / "pics-c", 11, start=200)
    other = indexed(tmp_path / "c", other_pictures, tiny_encoder)
    other_pictures[0].unlink()
    index_folders(other, tiny_encoder, [other_pictures[1].parent], IndexOptions(workers=0))
    their_file = faiss.read_index(str(saved_file(other)))
    assert their_file.ntotal == 10 and set(index_ids(their_file)) != set(range(1, 11))
    shutil.copy(saved_file(other), saved_file(ours))

    with pytest.warns(UserWarning, match=FOREIGN):
        index = ours.vector_index()
    assert index.rebuilt and sorted(index_ids(index.index)) == list(range(1, 11))
    assert_faiss_matches_db(ours)


def test_a_writer_rebuilds_and_saves_over_another_librarys_file(two, tiny_encoder):
    ours, theirs, pictures = two
    shutil.copy(saved_file(theirs), saved_file(ours))
    with pytest.warns(UserWarning, match=FOREIGN):
        summary = index_folders(ours, tiny_encoder, [pictures], IndexOptions(workers=0))
    assert summary.unchanged == 10 and summary.embedded == 0
    assert_faiss_matches_db(ours)
    assert ours.vector_index().rebuilt is False  # the saved file is proven now


def test_cli_query_over_another_librarys_file_warns_once_and_answers_right(two):
    ours, theirs, pictures = two
    shutil.copy(saved_file(theirs), saved_file(ours))
    picture = str(pictures / "pic007.png")
    first = run_cli("query", "--image", picture, "--library", str(ours.folder), "--top", "2", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["results"][0]["path"] == picture
    assert [line for line in first.stderr.splitlines() if FOREIGN in line] == [
        f"warning: {saved_file(ours)} {FOREIGN} (another library's, or an old copy): not used; rebuilt from the "
        f"database"]
    again = run_cli("query", "--image", picture, "--library", str(ours.folder), "--top", "2", "--json")
    assert again.returncode == 0 and FOREIGN not in again.stderr, again.stderr
    assert json.loads(again.stdout) == json.loads(first.stdout)
