"""The library's database: the source of truth for pictures, their vectors and the model.

SQLAlchemy 2.0 models over SQLite (WAL) by default; any SQLAlchemy URL works. Every row
id is also the picture's FAISS id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import (
    BigInteger,
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
    func,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .hashes import content_hash_kind

DB_NAME = "library.db"
OK = "ok"
FAILED = "failed"


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


@dataclass(frozen=True)
class PictureState:
    """What the scanner compares against: enough of a row to decide skip / re-embed / move."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def library_url(folder: Path) -> str:
    return os.environ.get("SEARCH_DATABASE_URL") or f"sqlite:///{folder / DB_NAME}"


class LibraryStore:
    """Rows, vectors and the model record of one library, behind SQLAlchemy sessions."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str, create: bool = False) -> LibraryStore:
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        if create:
            Base.metadata.create_all(engine)
        return cls(engine)

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

    def mark_index_saved(self, generation: int) -> None:
        with self.session() as s, s.begin():
            s.execute(update(LibraryModel).values(index_generation=generation))

    def mark_indexed(self, roots: Iterable[str], unreadable: dict[str, str]) -> None:
        """A run over these roots finished; ``unreadable`` (path → reason) replaces what earlier runs
        recorded under them."""
        now = utcnow()
        UnreadableFolderRecord.__table__.create(self.engine, checkfirst=True)  # libraries made before it existed
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
        if inspect(s.connection()).has_table(UnreadableFolderRecord.__tablename__):
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
                               Picture.status).where(*under_clause(root))
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
        each; none for a library made before this was recorded."""
        if not inspect(self.engine).has_table(UnreadableFolderRecord.__tablename__):
            return []
        with self.session() as s:
            folders = s.scalars(select(UnreadableFolderRecord).order_by(UnreadableFolderRecord.path)).all()
            return [{"path": f.path, "error": f.error,
                     "pictures_kept": s.scalar(select(func.count()).where(at_or_under(f.path)))} for f in folders]

    def failures(self) -> list[tuple[str, str]]:
        with self.session() as s:
            return [(r.path, r.error) for r in s.execute(
                select(Picture.path, Picture.error).where(Picture.status == FAILED).order_by(Picture.path))]

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
    search.filters.Filters.under_prefix renders the same range for the fast path (tested).
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
