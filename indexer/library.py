"""A library on disk: the database (source of truth), the derived FAISS file, one writer at a time."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import LibraryError
from .store import LibraryStore, ModelRecord, open_store
from .store.sqlitefile import read_only_error
from .vectors import VectorIndex

if TYPE_CHECKING:  # encoders imports torch: a query opens its library without it
    from encoders import ModelFingerprint, ModelSpec


class ModelMismatch(LibraryError):
    pass


class Library:
    def __init__(self, folder: Path, store: LibraryStore):
        self.folder = folder
        self.store = store

    @classmethod
    def open(cls, folder: str | Path, create: bool = False, database: str | None = None) -> Library:
        """The library in ``folder`` (its rows in the PostgreSQL database at ``database`` when given, default
        $SEARCH_DATABASE_URL): checked (a damaged, foreign, newer or unreadable one is refused with one line),
        upgraded to this release's schema where it may be written, opened read-only where it may not.
        ``create``: make it when there is none; the caller means to write."""
        folder = Path(folder).expanduser().absolute()
        try:
            return cls(folder, open_store(folder, create=create, url=database))
        except LibraryError:
            raise
        except Exception as e:
            problem = storage_error(e, folder)
            if problem is None:
                raise
            raise problem from e

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    def require_writable(self) -> None:
        """Refuse a library this process cannot write before a writer loads its model (seconds) for nothing."""
        if self.read_only:
            raise read_only_error(self.folder)

    def exists(self) -> bool:
        return self.model is not None

    @property
    def model(self) -> ModelRecord | None:
        return self.store.reads.model()

    def model_spec(self) -> ModelSpec:
        from encoders import ModelSpec

        record = self.model
        if record is None:
            raise LibraryError(f"the library at {self.folder} is empty: "
                               f"run `search index PATH --library {self.folder}`")
        return ModelSpec.from_weights(record.architecture, record.weights)

    def model_fingerprint(self) -> ModelFingerprint:
        """The identity of the model that filled the library, as recorded (no model loaded)."""
        from encoders.spec import ModelFingerprint

        record = self.model
        return ModelFingerprint(record.architecture, record.weights, record.weights_digest, record.embed_dim)

    def adopt_or_check_model(self, fingerprint: ModelFingerprint) -> None:
        """A new library records the model; an existing one refuses any other model."""
        record = self.model
        if record is None:
            self.store.writes.set_model(fingerprint.architecture, fingerprint.weights, fingerprint.id,
                                        fingerprint.weights_digest, fingerprint.embed_dim)
            return
        check_same_model(record, fingerprint, self.folder)

    @contextlib.contextmanager
    def writer_lock(self, wait: float = 0.0) -> Iterator[None]:
        """One writer at a time (store/lock.py); a second one waits up to ``wait`` seconds, then is refused with
        `LibraryBusy` naming the process that holds the library."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.store.writer_lock(self.folder, wait))
            except OSError as e:  # the lock file cannot be made
                raise storage_error(e, self.folder) or LibraryError(f"cannot lock {self.folder}: {e}") from e
            yield

    def vector_index(self, writer: bool = False, memory_map: bool = False) -> VectorIndex:
        """The FAISS index. A reader that had to rebuild it saves it when it may write the library and no writer
        holds it, so that the next query loads it instead (after an upgrade, or a file that was not this
        library's); otherwise the next writer does. ``memory_map``: a reader that only searches (see
        ``VectorIndex.open``)."""
        index = VectorIndex.open(self.folder, self.store, save_if_rebuilt=writer, memory_map=memory_map and not writer)
        if not writer and index.rebuilt and not self.read_only:
            try:
                with self.writer_lock(wait=0):
                    if self.store.reads.model().generation == index.generation:
                        index.save(self.folder, self.store)
            except (LibraryError, OSError):  # busy, or the disk said no: the next writer saves it
                pass
        return index


def check_same_model(record: ModelRecord, fingerprint: ModelFingerprint, folder: Path) -> None:
    if record.fingerprint == fingerprint.id:
        return
    raise ModelMismatch(
        f"the library at {folder} was filled by {record.architecture} ({record.weights}), not "
        f"{fingerprint.architecture} ({fingerprint.weights}); query without --model/--pretrained/--checkpoint to "
        f"use the library's model, or re-index with the new one into another library (--library NEW_DIR)")


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def storage_error(error: BaseException, folder: Path) -> LibraryError | None:
    """A full disk or a read-only library folder, from whichever layer noticed it, as one clear message.

    Every write is one transaction (rows + vectors) or an atomic file replace, so what was
    committed before stays, and nothing half-written is left behind.
    """
    text = " ".join(str(e) for e in (error, getattr(error, "orig", None), error.__cause__) if e)
    low = text.lower()
    code = getattr(error, "errno", None) or getattr(getattr(error, "orig", None), "errno", None)
    if code in _FULL or "disk is full" in low or "no space left" in low or "file too large" in low \
            or "quota exceeded" in low:
        return LibraryError(f"the disk holding the library at {folder} is full: nothing half-written was kept and "
                            f"everything stored before is intact; free some space and run the same command again")
    if code in _READ_ONLY or "readonly database" in low or "read-only file system" in low \
            or "unable to open database file" in low or "permission denied" in low:
        return read_only_error(folder)
    if "disk i/o error" in low:
        return LibraryError(f"the disk holding the library at {folder} failed to write (disk I/O error; often a full "
                            f"disk): everything stored before is intact; fix the disk and run the same command again")
    return None
