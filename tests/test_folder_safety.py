"""Nothing unseen is deleted, and identical files never leave ghosts: unreadable folders (permission denied, I/O
error, a symlinked folder whose target is gone) keep their rows; after any sequence of deletes, copies and moves a
run leaves exactly one row per picture file."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, draw_picture, library_rows, make_pictures, run_cli
from test_index import assert_faiss_matches_db
from test_library_schema import as_made_before_versions

from indexer import OK, IndexOptions, Library, LibraryError, index_folders
from indexer.hashes import content_hash
from indexer.scan import ScannedFile, UnreadableFolder, scan
from indexer.store import PictureRow
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


def rows(library: Library) -> dict[str, PictureRow]:
    return {row.path: row for row in library_rows(library)}


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


def fail_to_list(monkeypatch, folder: Path, code: int) -> None:
    """Listing ``folder`` fails with ``code`` (the scan lists folders with os.scandir); others list as usual."""
    real_scandir = os.scandir

    def scandir(path):
        if os.fspath(path) == str(folder):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_io_error_on_a_folder_keeps_its_rows_until_it_reads_again(photos, library, tiny_encoder, monkeypatch):
    index_folders(library, tiny_encoder, [photos], FAST)
    failing = photos / "b"
    kept = sorted(failing.iterdir())
    kept[0].unlink()  # deleted while its folder cannot be read: unknown to the run, so kept
    (photos / "pic000.png").unlink()  # deleted in a folder that was read: gone
    shutil.rmtree(photos / "c")  # a whole folder gone from a folder that was read: gone
    fail_to_list(monkeypatch, failing, errno.EIO)
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
    assert library.store.reads.counts()["pictures"] == 11
    assert SearchEngine(library.folder).status()["pictures_kept"] == 0


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

    fail_to_list(monkeypatch, photos, errno.EACCES)
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.removed, summary.pictures_kept, len(rows(library))) == (0, 11, 11)
    assert [f["path"] for f in summary.unreadable_folders] == [str(photos)]


def test_libraries_made_before_the_record_of_unreadable_folders(photos, library, tiny_encoder):
    """A library from a release before unreadable folders were recorded gets the table when it is next opened
    (the upgrade to this release's schema), and reports none until a run records some."""
    index_folders(library, tiny_encoder, [photos], FAST)
    library.store.close()
    as_made_before_versions(library.folder, drop=("unreadable_folders",))
    status = SearchEngine(library.folder).status()
    assert (status["unreadable_folders"], status["pictures_kept"], status["pictures"]) == ([], 0, 11)
    index_folders(Library.open(library.folder), tiny_encoder, [photos], FAST)
    assert SearchEngine(library.folder).status()["unreadable_folders"] == []


# -- identical files ----------------------------------------------------------------------------------------


def test_two_identical_files_deleted_and_one_put_back_under_a_new_name(photos, library, tiny_encoder):
    original = photos / "a" / "pic010.png"
    digest = content_hash(original.read_bytes())
    shutil.copy(original, photos / "copy1.png")
    shutil.copy(original, photos / "copy2.png")
    index_folders(library, tiny_encoder, [photos], FAST)
    (photos / "copy1.png").unlink()
    (photos / "copy2.png").rename(photos / "c" / "back.png")  # one copy back, under a new name
    original.unlink()
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.moved, summary.removed, summary.added, summary.embedded) == (1, 2, 0, 0)
    assert [p for p, r in rows(library).items() if r.content_hash == digest] == [str(photos / "c" / "back.png")]
    assert_in_step(library, photos)


def test_copies_moved_around(photos, library, tiny_encoder):
    first = photos / "a" / "pic010.png"
    for name in ("x.png", "y.png", "z.png"):
        shutil.copy(first, photos / "b" / name)
    index_folders(library, tiny_encoder, [photos], FAST)
    (photos / "b" / "x.png").rename(photos / "c" / "x.png")
    (photos / "b" / "y.png").rename(photos / "y-renamed.png")
    (photos / "b" / "z.png").unlink()
    shutil.copy(photos / "c" / "x.png", photos / "c" / "x-again.png")
    first.unlink()  # four rows gone, three files new: three moves, one removal
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.moved, summary.removed, summary.added, summary.embedded) == (3, 1, 0, 0)
    assert_in_step(library, photos)
    shutil.copy(photos / "c" / "x.png", photos / "b" / "again.png")  # a copy of a kept picture: a duplicate
    (photos / "c" / "x-again.png").rename(photos / "a" / "x-again.png")
    summary = index_folders(library, tiny_encoder, [photos], FAST)
    assert (summary.moved, summary.removed, summary.duplicates, summary.embedded) == (1, 0, 1, 0)
    assert_in_step(library, photos)


def test_a_picture_kept_as_original_while_its_file_gets_new_content(photos, library, tiny_encoder):
    """An editor that keeps the original beside the edit: the new file holds bytes whose only row was just
    re-embedded with other content; it is embedded, not failed as "an identical file failed"."""
    index_folders(library, tiny_encoder, [photos], IndexOptions(workers=0, batch_size=1))
    edited = photos / "a" / "pic010.png"
    edited.rename(photos / "a" / "pic010_original.png")
    draw_picture(500).save(edited)
    summary = index_folders(library, tiny_encoder, [photos], IndexOptions(workers=0, batch_size=1))
    assert (summary.updated, summary.added, summary.failed) == (1, 1, 0)
    assert_in_step(library, photos)


# -- random sequences ---------------------------------------------------------------------------------------


def assert_in_step(library: Library, root: Path, vectors_by_hash: dict[str, np.ndarray] | None = None) -> None:
    """One embedded row per picture file under root, none for anything else; each row holds its file's content
    hash, and (when given) the vector those bytes were first embedded with; FAISS holds exactly the rows."""
    held = rows(library)
    files = sorted(str(p) for p in root.rglob("*.png"))
    assert sorted(held) == files
    kind = library.store.reads.content_hash_kind()
    for path, row in held.items():
        assert row.status == OK, (path, row.error)
        assert row.content_hash == content_hash(Path(path).read_bytes(), kind), path
        vector = np.frombuffer(row.vector, dtype=np.float32)
        if vectors_by_hash is not None:
            first = vectors_by_hash.setdefault(row.content_hash, vector)
            assert np.allclose(vector, first, atol=1e-5), path
    assert_faiss_matches_db(library)


class RandomTree:
    """A small tree of pictures changed the way people change theirs, a few changes between two runs. Half the
    writes take a content from a small pool, so identical files are common, half a new one; every write gets its
    own mtime, as writes made seconds apart would (two writes within one clock tick, same size, are beyond
    size+mtime change detection)."""

    ACTIONS = ("add", "delete", "copy", "move", "change", "touch", "keep-original", "move-folder", "delete-folder")

    def __init__(self, root: Path, seed: int, pictures: int = 10, contents: int = 4):
        self.root, self.rng = root, random.Random(seed)
        self.pool = [self.content(300 + n) for n in range(contents)]
        self.clock = 1_700_000_000 * 10**9
        self.names = 0
        for name in ("a", "b", "a/deep"):
            (root / name).mkdir(parents=True)
        for _ in range(pictures):
            self.add()

    @staticmethod
    def content(seed: int) -> bytes:
        buffer = io.BytesIO()
        draw_picture(seed, size=(40, 32)).save(buffer, format="PNG")
        return buffer.getvalue()

    def files(self) -> list[Path]:
        return sorted(self.root.rglob("*.png"))

    def folders(self) -> list[Path]:
        return [self.root, *sorted(p for p in self.root.rglob("*") if p.is_dir())]

    def new_name(self, prefix: str) -> str:
        self.names += 1
        return f"{prefix}{self.names}"

    def new_path(self) -> Path:
        folder = self.rng.choice(self.folders())
        if self.rng.random() < 0.15:  # now and then in a new folder
            folder = folder / self.new_name("f")
            folder.mkdir()
        return folder / f"{self.new_name('p')}.png"

    def target(self, source: Path) -> Path:
        """A new name, or now and then another file to overwrite."""
        others = [f for f in self.files() if f != source]
        return self.rng.choice(others) if others and self.rng.random() < 0.2 else self.new_path()

    def stamp(self, path: Path) -> None:
        self.clock += 10**9
        os.utime(path, ns=(self.clock, self.clock))

    def write(self, path: Path) -> None:
        fresh = self.rng.random() < 0.5
        path.write_bytes(self.content(1000 + self.rng.randrange(10**6)) if fresh else self.rng.choice(self.pool))
        self.stamp(path)

    def add(self) -> None:
        self.write(self.new_path())

    def step(self) -> list[str]:
        """One to three changes, as a person makes between two runs."""
        return [self.change() for _ in range(self.rng.choice((1, 1, 2, 3)))]

    def change(self) -> str:
        files, folders = self.files(), self.folders()[1:]
        action = self.rng.choice(self.ACTIONS) if len(files) >= 4 else "add"
        source = self.rng.choice(files) if files else None
        if action == "add" or (action.endswith("folder") and not folders):
            self.add()
            return "add"
        if action == "delete":
            source.unlink()
        elif action == "copy":
            shutil.copy2(source, self.target(source))  # like `cp -p`: same bytes, same mtime
        elif action == "move":
            os.replace(source, self.target(source))
        elif action == "change":
            self.write(source)
        elif action == "touch":
            self.stamp(source)
        elif action == "keep-original":  # an editor keeping the original beside the edit
            os.replace(source, self.new_path())
            self.write(source)
        elif action == "move-folder":
            folder = self.rng.choice(folders)
            into = self.rng.choice([f for f in self.folders() if f != folder and folder not in f.parents])
            os.replace(folder, into / self.new_name("f"))
        else:
            shutil.rmtree(self.rng.choice(folders))
        return action


@pytest.mark.parametrize("seed", range(4))
def test_random_sequences_leave_one_row_per_file(tmp_path, library, tiny_encoder, seed):
    tree = RandomTree(tmp_path / "tree", seed)
    vectors_by_hash: dict[str, np.ndarray] = {}
    options = IndexOptions(workers=0, batch_size=1)  # a commit after each embedded picture: the most interleaving
    index_folders(library, tiny_encoder, [tree.root], options)
    assert_in_step(library, tree.root, vectors_by_hash)
    done: list[list[str]] = []
    for _ in range(50):
        done.append(tree.step())
        index_folders(library, tiny_encoder, [tree.root], options)
        try:
            assert_in_step(library, tree.root, vectors_by_hash)
        except AssertionError as e:
            raise AssertionError(f"after {done}: {e}") from e
    assert set(RandomTree.ACTIONS) <= {action for step in done for action in step}


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


def test_reindex_never_switches_away_from_pictures_it_could_not_see(photos, library, tiny_encoder, tmp_path):
    """The new library is built from what the scan sees: with a folder unreadable it would lack its pictures."""
    from search.reindex import reindex
    from search.tools import remove_paths

    disk = tmp_path / "disk"
    make_pictures(disk, 3, start=70)
    (photos / "camera").symlink_to(disk, target_is_directory=True)
    index_folders(library, tiny_encoder, [photos], FAST)
    before = (library.model.fingerprint, sorted(rows(library)))
    disk.rename(tmp_path / "unplugged")
    other = load_other_model(tiny_encoder, tmp_path)
    with pytest.raises(LibraryError, match="could not be read .*run the same command again"):
        reindex(library, other, FAST)
    reopened = Library.open(library.folder)
    assert (reopened.model.fingerprint, sorted(rows(reopened))) == before

    (tmp_path / "unplugged").rename(disk)
    summary = reindex(reopened, other, FAST)  # resumes the half-built library, then switches
    assert summary.pictures_after == len(before[1]) == 14
    assert Library.open(library.folder).model.fingerprint == other.fingerprint.id

    disk.rename(tmp_path / "unplugged")  # a root forgotten with `search remove` takes its records along
    index_folders(Library.open(library.folder), other, [photos], FAST)
    assert SearchEngine(library.folder).status()["unreadable_folders"]
    remove_paths(Library.open(library.folder), [photos])
    assert SearchEngine(library.folder).status()["unreadable_folders"] == []


def load_other_model(encoder, tmp_path):
    """The tiny model with other weights: a checkpoint file, as a user's fine-tuned model would be."""
    import torch
    from safetensors.torch import save_file

    from encoders import ModelSpec, load_encoder

    state = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v).contiguous()
             for k, v in encoder.model.state_dict().items()}
    save_file(state, str(tmp_path / "other.safetensors"))
    return load_encoder(ModelSpec.from_options("clipsearch-tiny", None, str(tmp_path / "other.safetensors")))
