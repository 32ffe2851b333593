"""What the read API hands out: plain values, not database objects, so no caller holds a session or a connection.

Standard library only: `search query` builds these without SQLAlchemy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

OK = "ok"
FAILED = "failed"
MAX_RETRIES = 3  # runs that try again a file whose failure may be transient, before it waits for the file to change


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def retry_due(status: str, transient: bool, attempts: int) -> bool:
    """A failure that may be transient, not yet tried again MAX_RETRIES times: the next run tries it again."""
    return status == FAILED and bool(transient) and attempts <= MAX_RETRIES


def as_datetime(value) -> datetime | None:
    """A stored moment as a naive datetime: SQLite hands back text, PostgreSQL a datetime (aware for the columns
    with a time zone, which hold UTC: made naive UTC, as SQLite keeps them)."""
    if value is None or isinstance(value, datetime) and value.tzinfo is None:
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def as_path(value) -> str:
    """A stored path (its bytes) as the str the filesystem functions take back (surrogate escapes kept)."""
    return os.fsdecode(bytes(value))


@dataclass(frozen=True, slots=True)
class PictureRow:
    """One picture of the library; ``vector`` (float32 bytes) only when asked for."""

    id: int
    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    width: int | None
    height: int | None
    taken_at: datetime | None
    status: str
    error: str | None
    vector: bytes | None = None

    @classmethod
    def from_db(cls, row) -> PictureRow:
        values = list(row)
        values[1], values[7] = as_path(values[1]), as_datetime(values[7])
        if len(values) > 10 and values[10] is not None:
            values[10] = bytes(values[10])
        return cls(*values)


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """The one model that filled the library, the generation of its vectors, and what the saved FAISS file holds."""

    architecture: str
    weights: str  # ModelSpec.weights: how to load it again
    fingerprint: str
    weights_digest: str
    embed_dim: int
    # Bumped by every transaction that changes a vector; the FAISS file records the generation it was built
    # from, so a stale file is detected and rebuilt.
    generation: int
    index_generation: int | None
    last_indexed_at: datetime | None
    # The saved FAISS file's proof (indexer/indexproof.py): checked on load, so another library's file is never used.
    index_count: int | None
    index_dim: int | None
    index_ids_digest: str | None
    inference: str | None  # the image tower's path that fills the library (encoders/inference.py)

    @classmethod
    def from_db(cls, row) -> ModelRecord:
        values = list(row)
        values[7] = as_datetime(values[7])
        return cls(*values)

    def index_proof(self):
        from ..indexproof import IndexProof

        if self.index_generation is None or self.index_ids_digest is None:
            return None
        return IndexProof(self.index_generation, self.index_count, self.index_dim, self.index_ids_digest)
