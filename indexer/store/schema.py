"""Which schema a library's database was written with, and whether this release can use it.

The version is Alembic's (the ``alembic_version`` table; revision "0003" is schema 3), read here
without Alembic so that a query can check it without importing it. Migrations live in
``migrations/`` beside this file and run from ``migrate.py``. A library made before versions were
recorded has the library tables and no version table: schema 0, upgraded by the first writer.
"""

from __future__ import annotations

from ..errors import LibraryError

SCHEMA_VERSION = 4  # the newest revision in migrations/versions (a test keeps them equal)
VERSION_TABLE = "alembic_version"
UNVERSIONED = 0  # made before versions were recorded
LIBRARY_TABLES = frozenset({"library", "pictures", "roots"})  # in every library since the first release


def revision_number(revision: str) -> int | None:
    return int(revision) if revision.isdigit() else None


def schema_of(tables: set[str], revision: str | None, where: str) -> int | None:
    """The schema version of a database holding ``tables`` and Alembic ``revision``; None when it holds no
    tables at all. Raises LibraryError for another program's database and for one newer than this release."""
    if not tables:
        return None
    number = revision_number(revision) if revision is not None else UNVERSIONED
    if VERSION_TABLE in tables and number is not None and number > SCHEMA_VERSION:
        raise LibraryError(f"the library at {where} has schema version {number}, newer than this clipsearch "
                           f"understands (schema {SCHEMA_VERSION}): upgrade clipsearch to use it")
    if number is None or not LIBRARY_TABLES <= tables:
        shown = ", ".join(sorted(tables - {VERSION_TABLE})[:8]) or "none"
        raise LibraryError(f"the database at {where} is another program's, not a clipsearch library (its tables: "
                           f"{shown}); choose another folder with --library")
    return number
