"""A library on disk: the database (source of truth), the derived FAISS file, one writer at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from encoders import ModelFingerprint, ModelSpec

from .errors import LibraryError
from .librarydb import read_only_error
from .store import LibraryModel, LibraryStore
from .vectors import VectorIndex

LOCK_NAME = "library.lock"


DEAD_HOLDER_GRACE = 10.0  # seconds a dead writer's children may keep the lock while they exit


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class LibraryBusy(LibraryError):
    pass


class ModelMismatch(LibraryError):
    pass


class Library:
    def __init__(self, folder: Path, store: LibraryStore):
        self.folder = folder
        self.store = store

    @classmethod
    def open(cls, folder: str | Path, create: bool = False) -> Library:
        """The library in ``folder``: checked (a damaged, foreign, newer or unreadable one is refused with one
        line), upgraded to this release's schema where it may be written, opened read-only where it may not.
        ``create``: make it when there is none; the caller means to write."""
        folder = Path(folder).expanduser().absolute()
        try:
            return cls(folder, LibraryStore.open(folder, create=create))
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

    def exists(self) -> bool:
        return self.model is not None

    @property
    def model(self) -> LibraryModel | None:
        return self.store.model()

    def model_spec(self) -> ModelSpec:
        record = self.model
        if record is None:
            raise LibraryError(f"the library at {self.folder} is empty: "
                               f"run `search index PATH --library {self.folder}`")
        return ModelSpec.from_weights(record.architecture, record.weights)

    def adopt_or_check_model(self, fingerprint: ModelFingerprint) -> None:
        """A new library records the model; an existing one refuses any other model."""
        record = self.model
        if record is None:
            self.store.set_model(fingerprint.architecture, fingerprint.weights, fingerprint.id,
                                 fingerprint.weights_digest, fingerprint.embed_dim)
            return
        check_same_model(record, fingerprint, self.folder)

    @contextlib.contextmanager
    def writer_lock(self, wait: float = 0.0) -> Iterator[None]:
        """One writer at a time. A second writer waits up to ``wait`` seconds (0: refused at once) and is
        then refused with `LibraryBusy`, naming the process that holds the library; never interleaved.
        The lock is the kernel's (flock): a writer killed with -9 releases it with its last breath."""
        try:
            handle = open(self.folder / LOCK_NAME, "a+")
        except OSError as e:
            raise storage_error(e, self.folder) or LibraryError(f"cannot lock {self.folder}: {e}") from e
        with handle:
            deadline = time.monotonic() + wait
            grace = True
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    handle.seek(0)
                    holder = handle.read().strip()
                    if grace and holder.isdigit() and not _alive(int(holder)):
                        # The writer is gone (killed, Ctrl-C): its decode workers, which share the lock, exit
                        # within moments of it. Re-running the command right away must not be refused.
                        deadline, grace = max(deadline, time.monotonic() + DEAD_HOLDER_GRACE), False
                    if time.monotonic() >= deadline:
                        who = f" (process {holder})" if holder.isdigit() else ""
                        raise LibraryBusy(f"another `search index`{who} is writing to {self.folder}; wait for it "
                                          f"to finish, then run this command again") from None
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def vector_index(self, writer: bool = False, memory_map: bool = False) -> VectorIndex:
        """The FAISS index. A reader that had to rebuild it saves it when it may write the library and no writer
        holds it, so that the next query loads it instead (after an upgrade, or a file that was not this
        library's); otherwise the next writer does. ``memory_map``: a reader that only searches (see
        ``VectorIndex.open``)."""
        index = VectorIndex.open(self.folder, self.store, save_if_rebuilt=writer, memory_map=memory_map and not writer)
        if not writer and index.rebuilt and not self.read_only:
            try:
                with self.writer_lock(wait=0):
                    if self.store.model().generation == index.generation:
                        index.save(self.folder, self.store)
            except (LibraryError, OSError):  # busy, or the disk said no: the next writer saves it
                pass
        return index


def check_same_model(record: LibraryModel, fingerprint: ModelFingerprint, folder: Path) -> None:
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
