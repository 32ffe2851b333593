"""The two databases a library's rows can live in, and what differs between them: how to connect, how a
statement names its parameters, how a read snapshot begins, how an extension is compared, which errors mean
what. Everything else (every statement in reads.py, every filter in filters.py) is written once for both.

The reads run on the databases' own DB-API modules (sqlite3, psycopg), not through SQLAlchemy: `search query`
must start in well under a second, and importing SQLAlchemy alone takes a good part of that (see BENCHMARKS.md,
"Figures behind choices in the code"). The writes use SQLAlchemy (writes.py), whose engine is made here on
first use.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..errors import LibraryError
from . import sqlitefile

LIBRARY_SCHEMA = "clipsearch"  # the PostgreSQL schema (namespace) holding a library's tables
SQLITE_MOMENT = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a datetime in SQLite (text that sorts as time)


class SQLite:
    """The library's SQLite file (WAL); read-only or immutable where this process may not write it."""

    name = "sqlite"
    begin_read = "BEGIN"  # WAL: one consistent snapshot from the first read to the end of the transaction
    errors = (sqlite3.Error,)

    def __init__(self, db: Path, read_only: bool):
        self.db = db
        self.read_only = read_only
        self.where = str(db.parent)

    def connect(self) -> sqlite3.Connection:
        connection = sqlitefile.connect(self.db, self.read_only)
        connection.isolation_level = None  # transactions are begun explicitly (snapshots)
        return connection

    @staticmethod
    def statement(sql: str) -> str:
        return sql

    @staticmethod
    def parameters(params) -> list:
        return [p.strftime(SQLITE_MOMENT) if isinstance(p, datetime) else p for p in params]

    @staticmethod
    def lower_suffix(length: int) -> str:
        """The last ``length`` bytes of the path, as text with ASCII letters lowered."""
        return f"lower(CAST(substr(path, {-length}) AS TEXT))"

    @staticmethod
    def suffix_value(suffix: bytes) -> str:
        return suffix.decode()

    def library_error(self, error: Exception) -> LibraryError | None:
        """A damaged file or a write refused by a read-only one, as the line users see; None for anything else."""
        problem = sqlitefile.as_library_error(error, self.db) if isinstance(error, sqlite3.DatabaseError) else None
        return problem if isinstance(problem, LibraryError) else None

    def sqlalchemy_engine(self):
        from sqlalchemy import create_engine, event
        from sqlalchemy.pool import QueuePool

        engine = create_engine("sqlite://", creator=lambda: sqlitefile.connect(self.db, self.read_only),
                               poolclass=QueuePool)
        if not self.read_only:
            event.listen(engine, "connect", _sqlite_pragmas)
        _translate_errors(engine, self)
        return engine


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class PostgreSQL:
    """A library's rows in a PostgreSQL database, in their own schema (``schema``); the FAISS file and the
    thumbnails stay in the library folder."""

    name = "postgresql"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    read_only = False

    def __init__(self, url: str, schema: str = LIBRARY_SCHEMA):
        self.url = url
        self.schema = schema
        self.where = shown_url(url) + ("" if schema == LIBRARY_SCHEMA else f" (schema {schema})")
        import psycopg

        self.errors = (psycopg.Error,)

    def connect(self, application: str = "clipsearch"):
        import psycopg

        try:
            return psycopg.connect(libpq_url(self.url), autocommit=True, application_name=application,
                                   options=f"-c search_path={self.schema}")
        except psycopg.OperationalError as e:
            raise unreachable(self.url, e) from None

    @staticmethod
    def statement(sql: str) -> str:
        return sql.replace("?", "%s")

    @staticmethod
    def parameters(params) -> list:
        return list(params)

    @staticmethod
    def lower_suffix(length: int) -> str:
        # bytea has no lower(): 'escape' encoding keeps ASCII as it is and writes other bytes as \ooo, so
        # only ASCII letters are lowered, as SQLite's lower() does.
        return f"lower(encode(substring(path FROM length(path) - {length - 1}), 'escape'))"

    @staticmethod
    def suffix_value(suffix: bytes) -> str:
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else "\\\\" if b == 92 else f"\\{b:03o}" for b in suffix)

    def library_error(self, error: Exception) -> LibraryError | None:
        import psycopg

        return unreachable(self.url, error) if isinstance(error, psycopg.OperationalError) else None

    def sqlalchemy_engine(self):
        from sqlalchemy import create_engine

        engine = create_engine(sqlalchemy_url(self.url), connect_args={"options": f"-c search_path={self.schema}"})
        _translate_errors(engine, self)
        return engine


def _translate_errors(engine, dialect) -> None:
    """Errors found by a write (a damaged file, a read-only mount, a server gone) end as one line, not a trace."""
    from sqlalchemy import event

    @event.listens_for(engine, "handle_error")
    def _as_library_error(context):
        problem = dialect.library_error(context.original_exception)
        if problem is not None:
            raise problem from context.original_exception


def unreachable(url: str, error: Exception) -> LibraryError:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return LibraryError(f"cannot use the database at {shown_url(url)}: {reason}")


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://...`` (SQLAlchemy's form) as libpq takes it: ``postgresql://...``."""
    scheme, rest = url.split("://", 1)
    return f"postgresql://{rest}" if scheme.split("+")[0] in ("postgresql", "postgres") else url


def sqlalchemy_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


def server(url: str, schema: str = LIBRARY_SCHEMA) -> PostgreSQL:
    """The server database a URL names; only PostgreSQL is one (a library's SQLite file is its folder's)."""
    scheme = url.split("://", 1)[0].split("+")[0].lower() if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        raise LibraryError(f"cannot use the database URL {shown_url(url)}: give a PostgreSQL one, "
                           f"postgresql://USER@HOST[:PORT]/DATABASE (a library's SQLite file is its folder's)")
    return PostgreSQL(url, schema)
