"""Which pictures a query may return: folder, date, extension and tag filters, as a value checked once.

The library's store renders it as SQL (indexer/store/filters.py), whose rows become the ids FAISS
searches within, so asking for 10 results under a small folder of a big library returns 10 when
there are 10.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d", "%Y-%m",
                "%Y")


class FilterError(ValueError):
    """A filter that cannot be understood (bad date, empty extension, ...)."""


def parse_date(text: str | date | datetime | None) -> datetime | None:
    """``2023``, ``2023-05``, ``2023-05-01``, ``2023-05-01T12:30[:00]`` → the (local, naive) start of it."""
    if text is None or isinstance(text, datetime):
        return text
    if isinstance(text, date):
        return datetime(text.year, text.month, text.day)
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    raise FilterError(f"cannot read the date {text!r}: use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDTHH:MM")


def _exts(values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out = []
    for value in values:
        for part in value.split(","):
            ext = part.strip().lstrip(".").lower()
            if part.strip() and (not ext or not re.fullmatch(r"[\w.-]+", ext)):
                raise FilterError(f"not a file extension: {part!r}")
            if ext and ext not in out:
                out.append(ext)
    return tuple(out)


def _tags(values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    return tuple(dict.fromkeys(v.strip() for value in values for v in value.split(",") if v.strip()))


@dataclass(frozen=True)
class Filters:
    """All conditions a result must meet. Dates: ``after`` inclusive, ``before`` exclusive, on the date
    taken (EXIF) when the picture has one, else the file's modification time."""

    under: str | None = None
    after: datetime | None = None
    before: datetime | None = None
    exts: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @classmethod
    def make(cls, under: str | os.PathLike | None = None, after=None, before=None, ext=None, tags=None) -> Filters:
        after, before = parse_date(after), parse_date(before)
        if after and before and after >= before:
            raise FilterError(f"--after {after:%Y-%m-%d %H:%M} is not before --before {before:%Y-%m-%d %H:%M}")
        return cls(under=os.path.abspath(os.fspath(under)) if under is not None else None, after=after,
                   before=before, exts=_exts(ext), tags=_tags(tags))

    def __bool__(self) -> bool:
        return bool(self.under or self.after or self.before or self.exts or self.tags)


def unknown_tags_message(tags, known) -> str | None:
    """An error for asked tags that no picture carries (most likely a typo), or None."""
    missing = [t for t in tags if t not in set(known)]
    if not missing:
        return None
    if not known:
        return f"no picture is tagged yet (asked: {', '.join(missing)}): run `search tag --labels ...` first"
    shown = ", ".join(list(known)[:20]) + (", ..." if len(known) > 20 else "")
    return f"no picture is tagged {', '.join(missing)}; tags in this library: {shown}"
