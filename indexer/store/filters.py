"""Which pictures a query may return, as one SQL condition over ``pictures`` for SQLite and PostgreSQL alike.

The condition selects the row ids FAISS searches within, so asking for 10 results under a small
folder of a big library returns 10 when there are 10. Folders are byte ranges of the paths (right
for names holding any bytes, and served by the path's index); extensions are compared on the
paths' last bytes in SQL on both databases. The filter itself (parsing, validation) is a value made
by ``search.filters.Filters``: anything with its five attributes renders here.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Protocol

from .rows import OK


class FilterValues(Protocol):
    under: str | None
    after: datetime | None  # inclusive, on the date taken when the picture has one, else its file time
    before: datetime | None  # exclusive
    exts: tuple[str, ...]  # lower case, without the dot
    tags: tuple[str, ...]  # every one required


def folder_range(folder: str) -> tuple[bytes, bytes]:
    """The byte range [low, high) holding exactly the paths inside ``folder``, whatever bytes names hold.

    Every such path starts with ``folder/``; the paths starting so are those from ``folder/`` up to,
    not including, ``folder`` followed by the byte after the separator ("/" + 1 = "0").
    """
    low = os.fsencode(folder.rstrip(os.sep) + os.sep)
    return low, low[:-1] + bytes([low[-1] + 1])


def at_or_under(path: str) -> tuple[str, list]:
    """Rows whose path is ``path`` itself or inside it."""
    low, high = folder_range(path)
    return "(path = ? OR (path >= ? AND path < ?))", [os.fsencode(path), low, high]


def local_ns(moment: datetime) -> int:
    """A naive local time as file-time nanoseconds (what SearchResult.modified shows back)."""
    return int(round(moment.timestamp() * 1e6)) * 1000


def where(filters: FilterValues, dialect) -> tuple[str, list]:
    """The WHERE condition (``?`` placeholders) and its parameters."""
    # `status || ''`: every row searched is 'ok', so the status index selects nothing; SQLite would pick it
    # over the path index and scan the whole table (see BENCHMARKS.md, "Queries", the folder filter).
    clauses, params = ["status || '' = ?"], [OK]
    if filters.under is not None:
        clauses.append("path >= ? AND path < ?")
        params += list(folder_range(filters.under))
    for bound, op in ((filters.after, ">="), (filters.before, "<")):
        if bound is not None:
            clauses.append(f"((taken_at IS NOT NULL AND taken_at {op} ?) OR (taken_at IS NULL AND mtime_ns {op} ?))")
            params += [bound, local_ns(bound)]
    if filters.exts:
        suffixes = [f".{ext}".encode() for ext in filters.exts]
        clauses.append("(" + " OR ".join(f"{dialect.lower_suffix(len(s))} = ?" for s in suffixes) + ")")
        params += [dialect.suffix_value(s) for s in suffixes]
    for tag in filters.tags:
        clauses.append("id IN (SELECT picture_id FROM picture_tags WHERE tag = ?)")
        params.append(tag)
    return " AND ".join(clauses), params
