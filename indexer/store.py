"""The library's database: the source of truth for pictures, their vectors and the model.

SQLAlchemy 2.0 models over SQLite (WAL) by default; any SQLAlchemy URL works. Every row
id is also the picture's FAISS id. The schema is versioned (indexer/schema.py): opening a
library checks the version, and upgrades an older one in place when it may write it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    and_,
    create_engine,
    delete,
    event,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import QueuePool

from . import librarydb
from .errors import LibraryError
from .hashes import content_hash_kind
from .indexproof import IndexProof
from .librarydb import DATABASE_URL_ENV, DB_NAME
from .schema import SCHEMA_VERSION, UNVERSIONED, VERSION_TABLE, schema_of

OK = "ok"
FAILED = "failed"
MAX_RETRIES = 3  # runs that try again a file whose failure may be transient, before it waits for the file to change


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class FsPath(TypeDecorator):
    """A filesystem path stored as its bytes: names with undecodable bytes survive the round trip."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value, dialect):
        return None if value is None else os.fsdecode(bytes(value))


class Base(DeclarativeBase):
    pass


class Picture(Base):
    __tablename__ = "pictures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # = FAISS id
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None]
    height: Mapped[int | None]
    taken_at: Mapped[datetime | None] = mapped_column(DateTime)  # EXIF date taken, when the picture has one
    status: Mapped[str] = mapped_column(String(16), index=True)  # "ok" or "failed"
    error: Mapped[str | None] = mapped_column(Text)
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, the model's dim
    indexed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A failed file's runs in a row that failed on these bytes, and whether the failure may be transient (a
    # decode that timed out, an I/O error while reading): those are tried again by the next runs.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    transient: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Root(Base):
    __tablename__ = "roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    last_indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class UnreadableFolderRecord(Base):
    """A folder the last run over its root could not read: the rows under it were kept, unseen."""

    __tablename__ = "unreadable_folders"

    path: Mapped[str] = mapped_column(FsPath, primary_key=True)
    error: Mapped[str] = mapped_column(Text)
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LibraryModel(Base):
    """The one model that filled this library, and the generation counter of its vectors."""

    __tablename__ = "library"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    architecture: Mapped[str] = mapped_column(String(200))
    weights: Mapped[str] = mapped_column(Text)  # ModelSpec.weights: how to load it again
    fingerprint: Mapped[str] = mapped_column(String(64))
    weights_digest: Mapped[str] = mapped_column(Text)
    embed_dim: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped by every transaction that changes a vector; the FAISS file records the
    # generation it was built from, so a stale file is detected and rebuilt.
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    index_generation: Mapped[int | None] = mapped_column(BigInteger)
    last_indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the saved FAISS file holds (indexproof.py): checked on load, so another library's file is never used.
    index_count: Mapped[int | None] = mapped_column(BigInteger)
    index_dim: Mapped[int | None] = mapped_column(Integer)
    index_ids_digest: Mapped[str | None] = mapped_column(String(32))

    def index_proof(self) -> IndexProof | None:
        if self.index_generation is None or self.index_ids_digest is None:
            return None
        return IndexProof(self.index_generation, self.index_count, self.index_dim, self.index_ids_digest)


@dataclass(frozen=True)
class PictureState:
    """What the scanner compares against: enough of a row to decide skip / re-embed / move."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    attempts: int = 0
    transient: bool = False

    def retry_due(self) -> bool:
        return retry_due(self.status, self.transient, self.attempts)


def retry_due(status: str, transient: bool, attempts: int) -> bool:
    """A failure that may be transient, not yet tried again MAX_RETRIES times: the next run tries it again."""
    return status == FAILED and transient and attempts <= MAX_RETRIES


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def database_url() -> str | None:
    """A server database holding the library's rows instead of its folder's SQLite file."""
    return os.environ.get(DATABASE_URL_ENV)


def _sqlite_engine(db: Path, read_only: bool) -> Engine:
    engine = create_engine("sqlite://", creator=lambda: librarydb.connect(db, read_only), poolclass=QueuePool)
    if not read_only:
        event.listen(engine, "connect", _sqlite_pragmas)

    @event.listens_for(engine, "handle_error")
    def _as_library_error(context):
        # Damage found long after opening (a disk error, a file cut short), or a write to a library that cannot
        # take one (`search tag` on a read-only mount), ends as one line, not a trace.
        if isinstance(context.original_exception, sqlite3.DatabaseError):
            problem = librarydb.as_library_error(context.original_exception, db)
            if isinstance(problem, LibraryError):
                raise problem from context.original_exception

    return engine


class LibraryStore:
    """Rows, vectors and the model record of one library, behind SQLAlchemy sessions.

    ``read_only``: this process cannot write the library (a read-only mount, another user's
    folder); it answers every read and never attempts a write. ``schema``: the version it holds.
    """

    def __init__(self, engine: Engine, read_only: bool = False, schema: int = SCHEMA_VERSION):
        self.engine = engine
        self.read_only = read_only
        self.schema = schema

    @classmethod
    def open(cls, folder: Path, create: bool = False) -> LibraryStore:
        """The library in ``folder`` (or at $SEARCH_DATABASE_URL), checked and at this release's schema;
        ``create`` makes a new one when there is none, and means the caller will write."""
        url = database_url()
        if url and create and not librarydb.folder_exists(folder):
            folder.mkdir(parents=True)  # the FAISS file and the writer's lock live there
        store = cls._open_server(url, create) if url else cls._open_sqlite(folder, create)
        if store.schema < SCHEMA_VERSION:
            if store.read_only:
                raise LibraryError(
                    f"the library at {folder} was made by an older clipsearch (schema {store.schema}; this release "
                    f"uses schema {SCHEMA_VERSION}) and cannot be upgraded here, where it is read-only: run any "
                    f"`search` command on it once where it is writable (or on a writable copy)")
            from .migrate import upgrade

            try:
                upgrade(store.engine)
            except Exception as e:
                reason = getattr(e, "orig", None) or e
                raise LibraryError(f"could not upgrade the library at {folder} from schema {store.schema} to "
                                   f"{SCHEMA_VERSION} ({reason}): it was left as it was") from e
            store.schema = SCHEMA_VERSION
        return store

    @classmethod
    def _open_sqlite(cls, folder: Path, create: bool) -> LibraryStore:
        db = librarydb.locate(folder)
        if db is None:
            if not create:
                raise librarydb.no_library(folder)
            db = cls._create_sqlite(folder)
        schema = librarydb.inspect_file(db)
        read_only = not librarydb.writable(db)
        if read_only and create:
            raise librarydb.read_only_error(folder)
        return cls(_sqlite_engine(db, read_only), read_only=read_only, schema=schema)

    @staticmethod
    def _create_sqlite(folder: Path) -> Path:
        """A new, empty library at this release's schema, made aside and put in place in one step, so that a
        library.db is never half-made; a library another process put there first wins."""
        from .migrate import upgrade

        folder.mkdir(parents=True, exist_ok=True)
        db = folder / DB_NAME
        fresh = folder / f".{DB_NAME}.{os.getpid()}.new"
        fresh.unlink(missing_ok=True)
        sqlite3.connect(fresh).close()
        engine = _sqlite_engine(fresh, read_only=False)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
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

    @classmethod
    def _open_server(cls, url: str, create: bool) -> LibraryStore:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":  # a SQLite file elsewhere, named by URL
            event.listen(engine, "connect", _sqlite_pragmas)
        inspector = inspect(engine)
        tables = set(inspector.get_table_names())
        revision = None
        if VERSION_TABLE in tables:
            with engine.connect() as connection:
                revision = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        schema = schema_of(tables, revision, url)
        if schema is None:
            if not create:
                raise LibraryError(f"no library in the database at {url}: create one with `search index PATH`")
            schema = UNVERSIONED  # an empty database: the upgrade makes every table
        return cls(engine, schema=schema)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- model record -------------------------------------------------------------------

    def model(self) -> LibraryModel | None:
        with self.session() as s:
            return s.scalars(select(LibraryModel)).first()

    def set_model(self, architecture: str, weights: str, fingerprint: str, weights_digest: str, dim: int) -> None:
        with self.session() as s, s.begin():
            s.add(LibraryModel(architecture=architecture, weights=weights, fingerprint=fingerprint,
                               weights_digest=weights_digest, embed_dim=dim))

    def bump_generation(self, s: Session) -> None:
        s.execute(update(LibraryModel).values(generation=LibraryModel.generation + 1))

    def mark_index_saved(self, proof: IndexProof) -> None:
        with self.session() as s, s.begin():
            s.execute(update(LibraryModel).values(index_generation=proof.generation, index_count=proof.count,
                                                  index_dim=proof.dim, index_ids_digest=proof.ids_digest))

    def mark_indexed(self, roots: Iterable[str], unreadable: dict[str, str]) -> None:
        """A run over these roots finished; ``unreadable`` (path → reason) replaces what earlier runs
        recorded under them."""
        now = utcnow()
        with self.session() as s, s.begin():
            for root in roots:
                row = s.scalars(select(Root).where(Root.path == root)).first()
                if row is None:
                    s.add(Root(path=root, last_indexed_at=now))
                else:
                    row.last_indexed_at = now
                s.execute(delete(UnreadableFolderRecord).where(at_or_under(root, UnreadableFolderRecord.path)))
            s.add_all(UnreadableFolderRecord(path=path, error=error, seen_at=now) for path, error in unreadable.items())
            s.execute(update(LibraryModel).values(last_indexed_at=now))

    def forget_unreadable(self, s: Session, root: str) -> None:
        """A root forgotten by `search remove` takes its unreadable-folder records along."""
        s.execute(delete(UnreadableFolderRecord).where(at_or_under(root, UnreadableFolderRecord.path)))

    def roots(self) -> list[Root]:
        with self.session() as s:
            return list(s.scalars(select(Root).order_by(Root.path)))

    # -- pictures -----------------------------------------------------------------------

    def states_under(self, roots: Iterable[str]) -> dict[str, PictureState]:
        """Rows whose path lies under any of the roots (compared as path prefixes)."""
        states: dict[str, PictureState] = {}
        with self.session() as s:
            for root in roots:
                query = select(Picture.id, Picture.path, Picture.size, Picture.mtime_ns, Picture.content_hash,
                               Picture.status, Picture.attempts, Picture.transient).where(*under_clause(root))
                for row in s.execute(query):
                    states[row.path] = PictureState(*row)
        return states

    def content_hash_kind(self) -> str:
        """The hash this library's rows were made with (hashes.CONTENT_HASHES): new libraries get the
        current one, older ones keep theirs so that moved and duplicate files are still recognised."""
        with self.session() as s:
            digest = s.scalar(select(Picture.content_hash).where(Picture.content_hash.is_not(None)).limit(1))
        return content_hash_kind(digest)

    def embedded_copy(self, content_hash: str) -> dict | None:
        """Vector and picture facts of an embedded file with these exact bytes, to copy to a duplicate."""
        with self.session() as s:
            row = s.execute(select(Picture.vector, Picture.width, Picture.height, Picture.taken_at).where(
                Picture.content_hash == content_hash, Picture.status == OK).limit(1)).first()
        return row._asdict() if row else None

    def count_with_hash(self, content_hash: str) -> int:
        with self.session() as s:
            return s.scalar(select(func.count()).where(Picture.content_hash == content_hash, Picture.status == OK))

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Picture.status, func.count()).group_by(Picture.status)).all()
        counts = dict(rows)
        return {"pictures": counts.get(OK, 0), "failed": counts.get(FAILED, 0)}

    def unreadable_folders(self) -> list[dict]:
        """Folders the last runs could not read ({path, error, pictures_kept}), with the rows now kept under
        each."""
        with self.session() as s:
            folders = s.scalars(select(UnreadableFolderRecord).order_by(UnreadableFolderRecord.path)).all()
            return [{"path": f.path, "error": f.error,
                     "pictures_kept": s.scalar(select(func.count()).where(at_or_under(f.path)))} for f in folders]

    def failed_files(self) -> list[dict]:
        """Every file that could not be indexed: {path, error, retries (runs that tried it again), retry (the
        next run tries it again: the failure may be transient)}."""
        with self.session() as s:
            rows = s.execute(select(Picture.path, Picture.error, Picture.attempts, Picture.transient).where(
                Picture.status == FAILED).order_by(Picture.path)).all()
        return [{"path": r.path, "error": r.error, "retries": max(r.attempts - 1, 0),
                 "retry": retry_due(FAILED, r.transient, r.attempts)} for r in rows]

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed."""
        return [(f["path"], f["error"]) for f in self.failed_files()]

    def iter_vectors(self, dim: int, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every embedded picture, in chunks, ordered by id."""
        last = -1
        with self.session() as s:
            while True:
                rows = s.execute(select(Picture.id, Picture.vector).where(
                    Picture.status == OK, Picture.id > last).order_by(Picture.id).limit(chunk)).all()
                if not rows:
                    return
                ids = np.fromiter((r.id for r in rows), dtype=np.int64, count=len(rows))
                vectors = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(len(rows), dim)
                last = int(ids[-1])
                yield ids, vectors

    def stored_vectors(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Vector bytes of these embedded rows, by id."""
        with self.session() as s:
            return dict(s.execute(select(Picture.id, Picture.vector).where(Picture.id.in_(list(ids)),
                                                                           Picture.status == OK)).all())

    def pictures(self, ids: Iterable[int]) -> dict[int, Picture]:
        ids = list(ids)
        with self.session() as s:
            return {p.id: p for p in s.scalars(select(Picture).where(Picture.id.in_(ids)))} if ids else {}

    def picture_by_path(self, path: str) -> Picture | None:
        with self.session() as s:
            return s.scalars(select(Picture).where(Picture.path == path)).first()

    def ids_under(self, folder: str) -> np.ndarray:
        with self.session() as s:
            ids = s.scalars(select(Picture.id).where(Picture.status == OK, *under_clause(folder))).all()
        return np.asarray(ids, dtype=np.int64)


def folder_range(folder: str) -> tuple[bytes, bytes]:
    """The byte range [low, high) holding exactly the paths inside ``folder``, whatever bytes names hold.

    Every such path starts with ``folder/``; the paths starting so are those from ``folder/`` up to,
    not including, ``folder`` followed by the byte after the separator ("/" + 1 = "0").
    """
    low = os.fsencode(folder.rstrip(os.sep) + os.sep)
    return low, low[:-1] + bytes([low[-1] + 1])


def under_clause(folder: str, column=Picture.path) -> tuple:
    """Rows whose path (``column``) is inside ``folder``: a byte-range on the path, so it uses the path's index."""
    low, high = folder_range(folder)
    return (column >= os.fsdecode(low), column < os.fsdecode(high))


def at_or_under(path: str, column=Picture.path):
    """Rows whose path (``column``) is ``path`` itself or inside it."""
    return or_(column == path, and_(*under_clause(path, column)))


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()
