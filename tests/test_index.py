"""The indexer, through its Python API: incremental runs, moves, deletions, bad files, FAISS in step."""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import xxhash
from alembic import command
from conftest import OPENCLIPART, both_backends, draw_picture, library_rows, make_pictures

from indexer import FAILED, OK, IndexOptions, Library, MissingRoot, ScanOptions, index_folders
from indexer.indexproof import INDEX_PATTERN
from indexer.store.migrate import config
from search import SearchEngine


def stored(library: Library) -> dict[str, np.ndarray]:
    return {r.path: np.frombuffer(r.vector, dtype=np.float32) for r in library_rows(library, OK)}


def assert_faiss_matches_db(library: Library) -> None:
    """The saved FAISS file holds exactly the database's vectors under the rows' ids."""
    record = library.model
    assert record.index_generation == record.generation
    index = library.vector_index().index
    rows = library_rows(library, OK)
    assert index.ntotal == len(rows)
    for row in rows:
        assert np.allclose(index.reconstruct(row.id), np.frombuffer(row.vector, dtype=np.float32))


def png_declaring(width: int, height: int) -> bytes:
    """A "decompression bomb": a tiny PNG whose header declares a huge picture (valid CRC)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@pytest.fixture
def photos(tmp_path):
    return make_pictures(tmp_path / "photos", 12)


@pytest.fixture
def library(tmp_path):
    return Library.open(tmp_path / "lib", create=True)


@both_backends
def test_first_index_then_rerun_embeds_nothing(photos, library, tiny_encoder):
    summary = index_folders(library, tiny_encoder, [photos[0].parent])
    assert (summary.added, summary.embedded, summary.failed) == (12, 12, 0)
    assert library.store.reads.counts() == {"pictures": 12, "failed": 0}
    assert_faiss_matches_db(library)
    vectors = stored(library)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors.values())

    again = index_folders(library, tiny_encoder, [photos[0].parent])
    assert (again.added, again.updated, again.embedded, again.unchanged) == (0, 0, 0, 12)
    assert stored(library).keys() == vectors.keys()


@both_backends
def test_changed_moved_and_deleted_files(photos, library, tiny_encoder):
    folder = photos[0].parent
    index_folders(library, tiny_encoder, [folder])
    before = stored(library)

    draw_picture(999).save(photos[0])  # changed content
    os.utime(photos[0], ns=(1, 10**18))
    moved = folder / "sub" / "renamed.png"
    moved.parent.mkdir()
    photos[1].rename(moved)  # moved: same bytes, new path
    photos[2].unlink()  # deleted

    summary = index_folders(library, tiny_encoder, [folder])
    assert (summary.updated, summary.moved, summary.removed, summary.added) == (1, 1, 1, 0)
    assert summary.embedded == 1  # only the changed file went through the model
    after = stored(library)
    assert str(photos[2]) not in after and str(photos[1]) not in after
    assert np.array_equal(after[str(moved)], before[str(photos[1])])
    assert not np.allclose(after[str(photos[0])], before[str(photos[0])])
    assert library.store.reads.counts()["pictures"] == 11
    assert_faiss_matches_db(library)


@both_backends
def test_content_hashes_and_libraries_made_with_the_older_hash(photos, library, tiny_encoder):
    """New libraries hash with xxh3-128; one made with blake2b-160 keeps it, so its moves and duplicates
    are still recognised after the upgrade instead of being embedded again."""
    folder = photos[0].parent
    index_folders(library, tiny_encoder, [folder])
    rows = library_rows(library)
    assert {r.content_hash for r in rows} == {xxhash.xxh3_128_hexdigest(Path(r.path).read_bytes()) for r in rows}
    library.store.writes.commit_batch([  # as the version before xxh3 wrote them
        (r.id, {"content_hash": hashlib.blake2b(Path(r.path).read_bytes(), digest_size=20).hexdigest()})
        for r in rows], [])
    with library.store.engine.connect() as connection:  # and without the kind recorded (revision 0003)
        command.downgrade(config(connection), "0002")
        connection.commit()
    library.store.close()
    library = Library.open(library.folder)  # upgraded: the kind is the one the rows hold
    assert library.store.reads.content_hash_kind() == "blake2b-160"
    before = stored(library)

    moved = folder / "sub" / "renamed.png"
    moved.parent.mkdir()
    photos[1].rename(moved)
    shutil.copy(photos[2], folder / "copy.png")
    make_pictures(folder, 1, start=40)
    summary = index_folders(library, tiny_encoder, [folder])
    assert (summary.moved, summary.duplicates, summary.added, summary.embedded) == (1, 1, 2, 1)
    assert np.array_equal(stored(library)[str(moved)], before[str(photos[1])])
    assert {len(r.content_hash) for r in library_rows(library)} == {40}
    assert_faiss_matches_db(library)


@both_backends
def test_missing_root_is_an_error_not_a_mass_deletion(photos, library, tiny_encoder, tmp_path):
    folder = photos[0].parent
    index_folders(library, tiny_encoder, [folder])
    shutil.move(folder, tmp_path / "unmounted")
    with pytest.raises(MissingRoot, match="not found"):
        index_folders(library, tiny_encoder, [folder])
    assert library.store.reads.counts()["pictures"] == 12


@both_backends
def test_hidden_junk_and_excluded_files_are_skipped(tmp_path, library, tiny_encoder):
    root = tmp_path / "photos"
    make_pictures(root, 2)
    for junk in ("@eaDir", "node_modules", ".git", ".hidden", "drafts"):
        make_pictures(root / junk, 1, start=50)
    draw_picture(60).save(root / ".secret.png")
    draw_picture(61).save(root / "._resource.png")
    (root / "notes.txt").write_text("not a picture extension")
    draw_picture(62).save(root / "UPPER.JPG")

    index_folders(library, tiny_encoder, [root], IndexOptions(scan=ScanOptions(excludes=("drafts",))))
    names = sorted(os.path.relpath(p, root) for p in stored(library))
    assert names == ["UPPER.JPG", "pic000.png", "pic001.png"]

    index_folders(library, tiny_encoder, [root], IndexOptions(scan=ScanOptions(include_hidden=True,
                                                                                excludes=("drafts",))))
    names = sorted(os.path.relpath(p, root) for p in stored(library))
    assert ".secret.png" in names and ".hidden/pic050.png" in names and "drafts/pic050.png" not in names


@both_backends
def test_symlinked_folders_followed_without_looping(tmp_path, library, tiny_encoder):
    root = tmp_path / "photos"
    make_pictures(root / "a", 2)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    outside = make_pictures(tmp_path / "elsewhere", 1, start=20)
    (root / "linked").symlink_to(outside[0].parent, target_is_directory=True)
    summary = index_folders(library, tiny_encoder, [root])
    assert summary.added == 3 and summary.failed == 0


@both_backends
def test_bad_files_are_recorded_and_skipped(tmp_path, library, tiny_encoder):
    root = tmp_path / "photos"
    make_pictures(root, 3)
    (root / "empty.jpg").write_bytes(b"")
    good = root / "full.jpg"
    draw_picture(7, size=(300, 200)).save(good, quality=90)
    (root / "truncated.jpg").write_bytes(good.read_bytes()[:400])
    (root / "text.png").write_text("this is not a PNG")
    (root / "random.webp").write_bytes(os.urandom(2048))
    (root / "bomb.png").write_bytes(png_declaring(100_000, 100_000))

    summary = index_folders(library, tiny_encoder, [root])
    assert summary.added == 4 and summary.failed == 5
    failures = dict(library.store.reads.failures())
    reasons = {os.path.basename(p): r for p, r in failures.items()}
    assert reasons["empty.jpg"] == "empty file"
    assert "truncated" in reasons["truncated.jpg"].lower()
    assert "not a picture" in reasons["text.png"] and "not a picture" in reasons["random.webp"]
    assert "pixels" in reasons["bomb.png"]
    assert all(p.vector is None for p in library_rows(library, FAILED))
    # Unchanged bad files are not retried; a fixed one is.
    draw_picture(8).save(root / "text.png")
    again = index_folders(library, tiny_encoder, [root])
    assert (again.updated, again.failed, again.embedded) == (1, 0, 1)
    assert_faiss_matches_db(library)


@both_backends
def test_exact_duplicates_are_embedded_once(tmp_path, library, tiny_encoder):
    root = tmp_path / "photos"
    pics = make_pictures(root, 3)
    shutil.copy(pics[0], root / "copy-a.png")
    shutil.copy(pics[0], root / "copy-b.png")
    summary = index_folders(library, tiny_encoder, [root])
    assert summary.added == 5 and summary.embedded == 3 and summary.duplicates == 2
    vectors = stored(library)
    assert np.array_equal(vectors[str(root / "copy-a.png")], vectors[str(pics[0])])


@both_backends
def test_self_retrieval_and_brute_force_agreement(photos, library, tiny_encoder, tmp_path):
    index_folders(library, tiny_encoder, [photos[0].parent])
    engine = SearchEngine(library.folder, encoder=tiny_encoder)
    for path in photos:
        top = engine.query(image=path, top_k=3)[0]  # stored vector
        assert top.path == str(path) and top.score == pytest.approx(1.0, abs=1e-5)
        outside = tmp_path / "query" / path.name  # same picture, decoded afresh
        outside.parent.mkdir(exist_ok=True)
        shutil.copy(path, outside)
        top = engine.query(image=outside, top_k=3)[0]
        assert top.path == str(path) and top.score > 0.999

    vectors = stored(library)
    paths = list(vectors)
    matrix = np.stack([vectors[p] for p in paths])
    for text in ("a red circle", "a photo of a dog", "blue squares"):
        q = tiny_encoder.encode_texts([text])[0]
        brute = np.argsort(-(matrix @ q))[:5]
        results = engine.query(text, top_k=5)
        assert [r.path for r in results] == [paths[i] for i in brute]
        assert np.allclose([r.score for r in results], (matrix @ q)[brute], atol=1e-5)


@both_backends
def test_query_under_a_folder(tmp_path, library, tiny_encoder):
    root = tmp_path / "photos"
    make_pictures(root / "2023", 6)
    make_pictures(root / "2024", 6, start=6)
    make_pictures(root / "2024-extra", 2, start=12)  # shares a prefix, is not inside 2024/
    index_folders(library, tiny_encoder, [root])
    engine = SearchEngine(library.folder, encoder=tiny_encoder)
    results = engine.query("anything", top_k=10, under=root / "2024")
    assert len(results) == 6 and all(r.path.startswith(str(root / "2024") + os.sep) for r in results)


@both_backends
def test_faiss_file_is_derived_and_rebuilt(photos, library, tiny_encoder):
    index_folders(library, tiny_encoder, [photos[0].parent])
    files = list(library.folder.glob(INDEX_PATTERN.format(generation="*")))
    assert len(files) == 1
    files[0].unlink()
    engine = SearchEngine(library.folder, encoder=tiny_encoder)
    assert engine.query(image=photos[3])[0].path == str(photos[3])
    # A file from an older generation is never served: a changed row makes it stale.
    index_folders(library, tiny_encoder, [photos[0].parent])
    photos[4].unlink()
    index_folders(library, tiny_encoder, [photos[0].parent])
    assert_faiss_matches_db(library)
    assert all(r.path != str(photos[4]) for r in engine.query(image=photos[5], top_k=20))


@pytest.mark.skipif(not OPENCLIPART.is_dir(), reason="openclipart-png not installed (apt-get install openclipart-png)")
def test_real_clipart_folder_self_retrieval(tmp_path, tiny_encoder):
    """Real pictures no one here drew: many sizes and modes; each one finds itself first."""
    folder = OPENCLIPART / "animals"
    library = Library.open(tmp_path / "lib", create=True)
    summary = index_folders(library, tiny_encoder, [folder])
    assert summary.added > 100 and summary.failed == 0
    engine = SearchEngine(library.folder, encoder=tiny_encoder)
    for path in sorted(folder.rglob("*.png"))[::7]:
        top = engine.query(image=path, top_k=1)[0]
        assert top.path == str(path) and top.score == pytest.approx(1.0, abs=1e-4)
