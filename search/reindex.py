"""`search reindex`: re-embed a whole library with another model, the old one answering until the new one is done.

A complete new library is built in a hidden folder beside the old one (``.NAME.reindex``;
in PostgreSQL its rows in a schema beside the library's) by the ordinary indexer over the
recorded roots; only when it is complete are the two swapped: the PostgreSQL schemas in
one transaction, then the folders (one ``renameat2(RENAME_EXCHANGE)`` on Linux, so a reader
sees the old library or the new one, never neither). An interrupted reindex leaves the old library
untouched, and the next run with the same model resumes the half-built one.
Tags are the user's data: they follow their pictures (by path) into the new library. Previews
belong to the old row ids and are made again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from indexer import IndexOptions, IndexSummary, Library, LibraryError, Progress, index_folders
from indexer.store import copy_tags

if TYPE_CHECKING:  # it imports torch: a `search reindex` refused before its model loads need not
    from encoders import ClipEncoder

AT_FDCWD = -100
RENAME_EXCHANGE = 2


@dataclass
class ReindexSummary:
    old_model: str
    new_model: str
    pictures_before: int
    pictures_after: int
    tags_kept: int
    index: IndexSummary
    kept_old: str | None

    def as_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "index"}, "index": self.index.as_dict()}


def staging_folder(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.reindex"


def exchange(a: Path, b: Path) -> None:
    """Swap two folders' names atomically (Linux renameat2); elsewhere, two renames in a row."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        renameat2 = getattr(libc, "renameat2", None)
        if renameat2 is not None:
            if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
                return
            errno = ctypes.get_errno()
            if errno not in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: not supported here, fall back
                raise OSError(errno, os.strerror(errno), str(a))
    aside = a.with_name(a.name + ".swap")
    # Folders, not a file's contents (atomic_write's job): without renameat2 there is no one-step swap.
    os.rename(a, aside)
    os.rename(b, a)
    os.rename(aside, b)


def reindex(library: Library, encoder: ClipEncoder, options: IndexOptions | None = None,
            progress: Progress | None = None, keep_old: bool = False) -> ReindexSummary:
    folder = Path(library.folder)
    record = library.model
    if record is None:
        raise LibraryError(f"the library at {folder} is empty: nothing to re-embed")
    roots = library.store.reads.roots()
    if not roots:
        raise LibraryError(f"the library at {folder} records no roots to re-embed")
    missing = [r for r in roots if not os.path.isdir(r) and not os.path.isfile(r)]
    if missing:
        raise LibraryError(f"root not found: {', '.join(missing)} (unmounted?); mount it, or forget it first with "
                           "`search remove ROOT`; nothing was changed")
    before = library.store.reads.counts()["pictures"]
    stage = staging_folder(folder)
    with library.writer_lock():  # nothing may be added to the old library meanwhile: it would be lost
        new = Library(stage, library.store.open_stage(stage))
        if new.model is not None and new.model.fingerprint != encoder.fingerprint.id:
            new.store.retire(keep=False)  # a half-built library for another model
            shutil.rmtree(stage)
            new = Library(stage, library.store.open_stage(stage))
        summary = index_folders(new, encoder, roots, options or IndexOptions(), progress or Progress())
        if summary.unreadable_folders:  # their pictures are in the old library only: swapping would lose them
            first = summary.unreadable_folders[0]
            more = len(summary.unreadable_folders) - 1
            raise LibraryError(
                f"{first['path']} could not be read ({first['error']})" + (f" nor {more} more folders" if more else "")
                + f"; the library still uses {record.architecture}, since switching now would drop the pictures "
                "there: make them readable (or forget them with `search remove`) and run the same command again, "
                "which keeps what was embedded so far")
        after = new.store.reads.counts()["pictures"]
        tags = copy_tags(library.store, new.store)
        library.store.swap(new.store)  # the database first: it is the truth; a FAISS file that is not is rebuilt
        exchange(folder, stage)
    new.store.retire(keep=keep_old)  # the stage now holds the old library
    kept = None
    if keep_old:
        kept_path = folder.with_name(f"{folder.name}.old")
        if kept_path.exists():
            shutil.rmtree(kept_path)
        os.rename(stage, kept_path)  # a whole folder moved aside, not a file written: not atomic_write's job
        kept = str(kept_path)
    else:
        shutil.rmtree(stage, ignore_errors=True)
    return ReindexSummary(old_model=f"{record.architecture} ({record.weights})",
                          new_model=f"{encoder.fingerprint.architecture} ({encoder.fingerprint.weights})",
                          pictures_before=before, pictures_after=after, tags_kept=tags, index=summary, kept_old=kept)
