"""Zero-shot tags of pictures, stored beside them: which label a picture got, and which pictures a label set saw.

A tag run is keyed by its label set (labels + templates + model fingerprint), so running
the same `search tag` again only classifies pictures it has not seen, or whose bytes
changed since. Rows go with their picture (ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, ForeignKey, Integer, String, insert, inspect, select
from sqlalchemy.orm import Mapped, mapped_column

from .store import Base, LibraryStore, Picture, utcnow


class PictureTag(Base):
    """A tag a picture carries, with the zero-shot probability that earned it."""

    __tablename__ = "picture_tags"

    picture_id: Mapped[int] = mapped_column(Integer, ForeignKey("pictures.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(200), primary_key=True, index=True)
    score: Mapped[float] = mapped_column(Float)
    labelset: Mapped[str] = mapped_column(String(64), index=True)


class TagRun(Base):
    """A picture classified against a label set (tagged or not), for the bytes it had then."""

    __tablename__ = "tag_runs"

    picture_id: Mapped[int] = mapped_column(Integer, ForeignKey("pictures.id", ondelete="CASCADE"), primary_key=True)
    labelset: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    tagged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


TAG_TABLES = [PictureTag.__table__, TagRun.__table__]


def ensure_tag_tables(engine) -> None:
    """Create the tag tables in a library made before they existed (no-op when present)."""
    Base.metadata.create_all(engine, tables=TAG_TABLES)


def has_tag_tables(engine) -> bool:
    return inspect(engine).has_table(PictureTag.__tablename__)


def copy_tags(source: LibraryStore, target: LibraryStore, chunk: int = 5000) -> int:
    """Give the target's pictures the tags the same paths carry in the source (a re-embedded library).

    Tags are the user's data, so they outlive the model that proposed them; which pictures a
    label set has classified (``TagRun``) is bookkeeping of the old model and stays behind, so
    `search tag` with the new model classifies everything again. Returns the tags copied.
    """
    if not has_tag_tables(source.engine):
        return 0
    ensure_tag_tables(target.engine)
    copied = 0
    with source.session() as old, target.session() as new, new.begin():
        rows = old.execute(select(Picture.path, PictureTag.tag, PictureTag.score, PictureTag.labelset)
                           .join(PictureTag, PictureTag.picture_id == Picture.id).order_by(Picture.path))
        for part in rows.partitions(chunk):
            paths = [r.path for r in part]
            ids = dict(new.execute(select(Picture.path, Picture.id).where(Picture.path.in_(paths))).all())
            values = [{"picture_id": ids[r.path], "tag": r.tag, "score": r.score, "labelset": r.labelset}
                      for r in part if r.path in ids]
            if values:
                new.execute(insert(PictureTag), values)
                copied += len(values)
    return copied
