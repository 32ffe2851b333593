"""A library's SQLite file before anything writes to it: is it there, is it a library of ours, can we write it.

Everything here only reads, so a damaged, foreign or newer database is refused exactly as it was found
(even SQLite's `PRAGMA journal_mode=WAL` would rewrite another program's file). Also how to open the
file when this process cannot write it (a read-only mount, another user's library): SQLite in WAL mode
opens read-only only when it can use the ``-shm`` file, so a finished library is then opened
``immutable``. Standard library only: `search query` uses it without SQLAlchemy or torch.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from pathlib import Path

from ..errors import LibraryError, NoLibrary
from .schema import VERSION_TABLE, schema_of

DB_NAME = "library.db"
BUSY_TIMEOUT_MS = 30_000
DAMAGE_SIGNS = ("file is not a database", "database disk image is malformed")


def damaged(db: Path, why: str) -> LibraryError:
    return LibraryError(f"{db} is damaged ({why}): restore it from a backup, or move it away and index again "
                        f"into a new library")


def as_library_error(error: sqlite3.DatabaseError, db: Path) -> Exception:
    """A damaged or read-only file as the one line users see; any other database error as it was."""
    if any(sign in str(error) for sign in DAMAGE_SIGNS):
        return damaged(db, str(error))
    if "attempt to write a readonly database" in str(error):
        return read_only_error(db.parent)
    return error


def no_library(folder: Path) -> LibraryError:
    return NoLibrary(f"no library at {folder}: create one with `search index PATH --library {folder}`")


def read_only_error(folder: Path) -> LibraryError:
    return LibraryError(f"the library folder {folder} is read-only or not writable by this user: nothing was "
                        f"changed; make it writable or choose another folder with --library")


def unreadable(folder: Path, error: OSError) -> LibraryError:
    return LibraryError(f"cannot read the library at {folder}: {error.strerror or error}; ask its owner for "
                        f"access, or choose another folder with --library")


def locate(folder: Path) -> Path | None:
    """The library's database file, or None when the folder holds none (or does not exist yet)."""
    if not folder_exists(folder):
        return None
    try:
        (folder / DB_NAME).stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise unreadable(folder, e) from None
    return folder / DB_NAME


def folder_exists(folder: Path) -> bool:
    """Whether the library folder exists; LibraryError when that path cannot be one."""
    try:
        if not stat.S_ISDIR(folder.stat().st_mode):
            raise LibraryError(f"the library path {folder} is a file, not a folder: give the folder that holds (or "
                               f"will hold) {DB_NAME}")
    except FileNotFoundError:
        return False
    except NotADirectoryError:  # a file higher up the path
        raise LibraryError(f"the library path {folder} goes through a file, not a folder") from None
    except OSError as e:
        raise unreadable(folder, e) from None
    return True


def check_file(db: Path) -> None:
    """Refuse what cannot be a library database: a folder, an empty file, one this user may not read. The file
    is never opened here: closing another handle on a database this process has open through SQLite would
    drop SQLite's locks on it. SQLite itself tells a file that is not a database, or one cut short."""
    try:
        st = db.stat()
    except OSError as e:
        raise unreadable(db.parent, e) from None
    if not stat.S_ISREG(st.st_mode):
        raise LibraryError(f"{db} is not a regular file, so not a library database; choose another folder with "
                           f"--library")
    if st.st_size == 0:
        raise LibraryError(f"{db} is empty (0 bytes), not a library: move it away to start a new library there, or "
                           f"restore it from a backup")
    if not os.access(db, os.R_OK):
        raise unreadable(db.parent, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))


def wal_holds_changes(db: Path) -> bool:
    try:
        return os.path.getsize(f"{db}-wal") > 0
    except OSError:
        return False


def writable(db: Path) -> bool:
    """Whether this process may write the library: its folder, its database and SQLite's files beside it."""
    files = [db.parent, db] + [Path(f"{db}{suffix}") for suffix in ("-wal", "-shm")]
    return all(os.access(f, os.W_OK) for f in files if f == db.parent or f.exists())


def connect(db: Path, read_only: bool) -> sqlite3.Connection:
    """A connection to the library's file (never creating it). Read-only: ``mode=ro``, or ``immutable`` where
    SQLite cannot open a WAL database read-only (no -shm and no right to make one) and its WAL holds nothing."""
    uri = db.as_uri()
    try:
        connection = _connect(f"{uri}?mode={'ro' if read_only else 'rw'}")
        if read_only:  # SQLite opens the WAL's -shm file on the first read
            connection.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return connection
    except sqlite3.DatabaseError as e:
        # SQLite reports a -shm file it may not make as one it cannot open, or as a write to a read-only folder.
        if not read_only or not any(sign in str(e) for sign in ("unable to open", "readonly database")):
            raise as_library_error(e, db) from None
    if wal_holds_changes(db):
        raise LibraryError(f"{db} was not closed cleanly and is read-only here: its latest changes are in "
                           f"{db.name}-wal, which only a process that may write the folder can apply; run any "
                           f"`search` command on it where it is writable") from None
    return _connect(f"{uri}?immutable=1")


def _connect(uri: str) -> sqlite3.Connection:
    # check_same_thread: SQLAlchemy's pool hands a connection to whichever thread asks next.
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return connection


def read_schema(connection: sqlite3.Connection, db: Path) -> int | None:
    """The schema version of an open library file (see schema.schema_of); raises LibraryError for a damaged one."""
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = None
        if VERSION_TABLE in tables:
            row = connection.execute(f"SELECT version_num FROM {VERSION_TABLE} LIMIT 1").fetchone()
            revision = row[0] if row else None
    except sqlite3.DatabaseError as e:
        raise as_library_error(e, db) from None
    return schema_of(tables, revision, str(db.parent))


def open_for_reading(db: Path) -> tuple[sqlite3.Connection, int]:
    """A read-only connection to a library file that passed every check, and its schema version."""
    check_file(db)
    connection = connect(db, read_only=True)
    try:
        schema = read_schema(connection, db)
    except BaseException:
        connection.close()
        raise
    if schema is None:
        connection.close()
        raise LibraryError(f"{db} is an empty SQLite database, not a library: move it away to start a new library "
                           f"there, or choose another folder with --library")
    return connection, schema


def inspect_file(db: Path) -> int:
    """Check a library file without writing to it; its schema version."""
    connection, schema = open_for_reading(db)
    connection.close()
    return schema
