"""The library's tables, as the newest migration leaves them (tests/test_library_schema.py keeps the two equal).

Every picture's row id is also its FAISS id. Paths are stored as their bytes (BLOB in SQLite, bytea in
PostgreSQL): names holding any bytes survive the round trip, and a folder is a byte range of paths.
Used by the writes and by Alembic; the reads (reads.py) name the same columns in SQL and import none of this.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

metadata = MetaData()

pictures = Table(
    "pictures", metadata,
    Column("id", Integer, primary_key=True),  # = FAISS id
    Column("path", LargeBinary, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("content_hash", String(64), index=True),  # indexer/hashes.py
    Column("width", Integer),
    Column("height", Integer),
    Column("taken_at", DateTime),  # EXIF date taken, when the picture has one
    Column("status", String(16), nullable=False, index=True),  # "ok" or "failed"
    Column("error", Text),
    Column("vector", LargeBinary),  # float32, the model's dim
    Column("indexed_at", DateTime(timezone=True), nullable=False),
    # A failed file's runs in a row that failed on these bytes, and whether the failure may be transient (a
    # decode that timed out, an I/O error while reading): those are tried again by the next runs.
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("transient", Boolean, nullable=False, server_default=false()),
)

roots = Table(
    "roots", metadata,
    Column("id", Integer, primary_key=True),
    Column("path", LargeBinary, nullable=False, unique=True),
    Column("last_indexed_at", DateTime(timezone=True)),
)

# A folder the last run over its root could not read: the rows under it were kept, unseen.
unreadable_folders = Table(
    "unreadable_folders", metadata,
    Column("path", LargeBinary, primary_key=True),
    Column("error", Text, nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
)

# The one model that filled this library (one row), the generation of its vectors, the saved FAISS file's proof.
library = Table(
    "library", metadata,
    Column("id", Integer, primary_key=True),
    Column("architecture", String(200), nullable=False),
    Column("weights", Text, nullable=False),  # ModelSpec.weights: how to load it again
    Column("fingerprint", String(64), nullable=False),
    Column("weights_digest", Text, nullable=False),
    Column("embed_dim", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("index_generation", BigInteger),
    Column("last_indexed_at", DateTime(timezone=True)),
    Column("index_count", BigInteger),
    Column("index_dim", Integer),
    Column("index_ids_digest", String(32)),
    # indexer/hashes.py CONTENT_HASHES: new libraries get the current one, older ones keep theirs, so that moved
    # and duplicate files are still recognised.
    Column("content_hash_kind", String(16), nullable=False, server_default="xxh3-128"),
    # encoders/inference.py: the image tower's path that filled the library; later runs keep it unless forced.
    Column("inference", String(32)),
)

# Zero-shot tags: the label a picture got, with its probability, from a label set (labels + templates + model).
picture_tags = Table(
    "picture_tags", metadata,
    Column("picture_id", Integer, ForeignKey("pictures.id", ondelete="CASCADE"), primary_key=True),
    Column("tag", String(200), primary_key=True, index=True),
    Column("score", Float, nullable=False),
    Column("labelset", String(64), nullable=False, index=True),
)

# A picture classified against a label set (tagged or not), for the bytes it had then.
tag_runs = Table(
    "tag_runs", metadata,
    Column("picture_id", Integer, ForeignKey("pictures.id", ondelete="CASCADE"), primary_key=True),
    Column("labelset", String(64), primary_key=True),
    Column("content_hash", String(64)),
    Column("tagged_at", DateTime(timezone=True), nullable=False),
)
