"""A library on disk: the database (source of truth), the derived FAISS file, one writer at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from encoders import ModelFingerprint, ModelSpec

from .store import DB_NAME, LibraryModel, LibraryStore, library_url
from .vectors import VectorIndex

LOCK_NAME = "library.lock"


class LibraryError(Exception):
    """A library that cannot be used as asked; the message says what to do."""


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
        folder = Path(folder).expanduser().absolute()
        url = library_url(folder)
        if url.startswith("sqlite") and not (folder / DB_NAME).is_file():
            if not create:
                raise LibraryError(f"no library at {folder}: create one with `search index PATH --library {folder}`")
            folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, LibraryStore.open(url, create=create))

    def exists(self) -> bool:
        return self.model is not None

    @property
    def model(self) -> LibraryModel | None:
        return self.store.model()

    def model_spec(self) -> ModelSpec:
        record = self.model
        if record is None:
            raise LibraryError(f"the library at {self.folder} is empty: run `search index PATH --library {self.folder}`")
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
    def writer_lock(self) -> Iterator[None]:
        """One writer at a time; a second `search index` is refused at once, never interleaved."""
        with open(self.folder / LOCK_NAME, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LibraryBusy(f"another `search index` is writing to {self.folder}; wait for it to finish") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def vector_index(self, writer: bool = False) -> VectorIndex:
        return VectorIndex.open(self.folder, self.store, save_if_rebuilt=writer)


def check_same_model(record: LibraryModel, fingerprint: ModelFingerprint, folder: Path) -> None:
    if record.fingerprint == fingerprint.id:
        return
    raise ModelMismatch(
        f"the library at {folder} was filled by {record.architecture} ({record.weights}), not "
        f"{fingerprint.architecture} ({fingerprint.weights}); query without --model/--pretrained/--checkpoint to "
        f"use the library's model, or re-index with the new one into another library (--library NEW_DIR)")
