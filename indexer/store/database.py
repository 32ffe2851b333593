"""Opening a library's database: the folder's SQLite file, or a PostgreSQL database named by URL.

Opening checks before anything writes: a damaged, foreign or newer database is refused in one
line as it was found. The schema version is read with plain SELECTs against the head revision
baked into this package (schema.py); Alembic is imported only when an older library is upgraded,
which a writer does in place, in one transaction, on open.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..errors import LibraryError, NoLibrary
from . import sqlitefile
from .connections import Connections
from .dialects import LIBRARY_SCHEMA, SQLite, server
from .reads import Reads
from .schema import SCHEMA_VERSION, UNVERSIONED, schema_of
from .sqlitefile import DB_NAME

DATABASE_URL_ENV = "SEARCH_DATABASE_URL"  # a PostgreSQL database holding the library's rows (--database)
STAGE = "_reindex"  # the PostgreSQL schema of a library being re-embedded: the library's own, with this suffix


class LibraryStore:
    """One library's rows: its reads (``reads``, light: no SQLAlchemy), its writes (``writes``, made on first use)
    and its writer lock. ``read_only``: this process cannot write the library (a read-only mount, another
    user's folder); it answers every read and never attempts a write. ``schema``: the version it holds."""

    def __init__(self, dialect, schema: int):
        self.dialect = dialect
        self.schema = schema
        self.connections = Connections(dialect)
        self.reads = Reads(self.connections)
        self._engine = None
        self._writes = None

    @property
    def read_only(self) -> bool:
        return self.dialect.read_only

    @property
    def where(self) -> str:
        """The library's place as messages name it: its folder, or its database URL (no password)."""
        return self.dialect.where

    @property
    def engine(self):
        """SQLAlchemy's engine, for the writes and the migrations."""
        if self._engine is None:
            self._engine = self.dialect.sqlalchemy_engine()
        return self._engine

    @property
    def writes(self):
        if self._writes is None:
            from .writes import Writes

            self._writes = Writes(self.engine)
        return self._writes

    def writer_lock(self, folder: Path, wait: float = 0.0):
        from .lock import writer_lock

        return writer_lock(self, folder, wait)

    def upgrade(self) -> None:
        """Bring an older library to this release's schema, all or nothing."""
        if self.schema >= SCHEMA_VERSION:
            return
        if self.read_only:
            raise LibraryError(
                f"the library at {self.where} was made by an older clipsearch (schema {self.schema}; this release "
                f"uses schema {SCHEMA_VERSION}) and cannot be upgraded here, where it is read-only: run any "
                f"`search` command on it once where it is writable (or on a writable copy)")
        from .migrate import upgrade

        try:
            upgrade(self.engine, getattr(self.dialect, "schema", None))
        except Exception as e:
            reason = getattr(e, "orig", None) or e
            raise LibraryError(f"could not upgrade the library at {self.where} from schema {self.schema} to "
                               f"{SCHEMA_VERSION} ({reason}): it was left as it was") from e
        self.schema = SCHEMA_VERSION

    # -- a library built beside this one (`search reindex`) ------------------------------------------

    def open_stage(self, folder: Path) -> LibraryStore:
        """The store of a new library built beside this one, made when missing: its folder's SQLite file, or in
        PostgreSQL a schema beside this one's (``<schema>_reindex``)."""
        if self.dialect.name == "sqlite":
            return open_store(folder, create=True)
        return open_store(folder, create=True, url=self.dialect.url, schema_name=f"{self.dialect.schema}{STAGE}")

    def swap(self, stage: LibraryStore) -> None:
        """The stage's rows become this library's and this library's the stage's, in one step. A SQLite library's
        rows are its folder's file: swapping the folders (the caller's) swaps them."""
        if self.dialect.name != "sqlite":
            mine, theirs = self.dialect.schema, stage.dialect.schema
            self.writes.rename_schemas([(mine, f"{mine}_swap"), (theirs, mine), (f"{mine}_swap", theirs)])

    def retire(self, keep: bool) -> None:
        """A stage no longer wanted, or swapped out (then holding the old library): its PostgreSQL schema is
        dropped, or kept as ``<library schema>_old`` (replacing an older one). A SQLite stage is its folder (the
        caller's)."""
        if self.dialect.name != "sqlite":
            library_schema = self.dialect.schema.removesuffix(STAGE)
            self.writes.retire_schema(self.dialect.schema, f"{library_schema}_old" if keep else None)
        self.close()

    def close(self) -> None:
        """Let go of every connection (the file or the server is free for others: a mount can be unmounted)."""
        self.connections.close()
        if self._engine is not None:
            self._engine.dispose()


def database_url() -> str | None:
    return os.environ.get(DATABASE_URL_ENV) or None


def open_store(folder: Path, create: bool = False, url: str | None = None,
               schema_name: str = LIBRARY_SCHEMA) -> LibraryStore:
    """The library of ``folder`` (its rows in the folder's SQLite file, or in the PostgreSQL database at ``url``,
    default $SEARCH_DATABASE_URL), checked and at this release's schema. ``create`` makes a new one when there
    is none, and means the caller will write."""
    url = url or database_url()
    if url and create and not sqlitefile.folder_exists(folder):
        folder.mkdir(parents=True)  # the FAISS file and the thumbnails live there
    store = _open_server(url, create, schema_name) if url else _open_sqlite(folder, create)
    try:
        store.upgrade()
    except BaseException:
        store.close()
        raise
    return store


def _open_sqlite(folder: Path, create: bool) -> LibraryStore:
    db = sqlitefile.locate(folder)
    if db is None:
        if not create:
            raise sqlitefile.no_library(folder)
        db = _create_sqlite(folder)
    schema = sqlitefile.inspect_file(db)
    read_only = not sqlitefile.writable(db)
    if read_only and create:
        raise sqlitefile.read_only_error(folder)
    return LibraryStore(SQLite(db, read_only), schema)


def _create_sqlite(folder: Path) -> Path:
    """A new, empty library at this release's schema, made aside and put in place in one step, so that a
    library.db is never half-made; a library another process put there first wins."""
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / DB_NAME
    fresh = folder / f".{DB_NAME}.{os.getpid()}.new"
    fresh.unlink(missing_ok=True)
    sqlite3.connect(fresh).close()
    made = LibraryStore(SQLite(fresh, read_only=False), UNVERSIONED)
    try:
        made.upgrade()
    finally:
        made.close()
    with open(fresh, "rb") as f:
        os.fsync(f.fileno())
    try:
        os.link(fresh, db)  # fails when a library.db appeared meanwhile: that one is kept
    except FileExistsError:
        pass
    except OSError:  # no hard links on this filesystem (FAT, some network mounts)
        if not db.exists():
            os.replace(fresh, db)
    finally:
        fresh.unlink(missing_ok=True)
    return db


def _open_server(url: str, create: bool, schema_name: str) -> LibraryStore:
    store = LibraryStore(server(url, schema_name), UNVERSIONED)
    try:
        schema = schema_of(*store.reads.server_tables_and_revision(schema_name), store.where)
        if schema is None and not create:
            raise NoLibrary(f"no library in the database at {store.where}: create one with `search index PATH "
                            f"--database URL`")
    except BaseException:
        store.close()
        raise
    store.schema = UNVERSIONED if schema is None else schema  # none yet: the upgrade makes every table
    return store
