"""The one owner of a library's data: its tables, their schema version and migrations, and every read and write.

    tables.py      the tables (SQLAlchemy), as the newest migration leaves them
    schema.py      the schema version this release reads and writes; migrations/ + migrate.py (Alembic)
    database.py    opening: the folder's SQLite file (WAL, read-only, immutable) or PostgreSQL by URL
    reads.py       every read (plain DB-API statements: `search query` starts without SQLAlchemy)
    writes.py      every write, each one transaction (SQLAlchemy)
    filters.py     query filters as one SQL condition for both databases
    lock.py        one writer at a time (flock, or PostgreSQL's advisory lock)

Nothing outside this package writes SQL. Names load on first use, so `import indexer.store` costs
almost nothing (no SQLAlchemy, no Alembic, no torch).
"""

from encoders.lazy import lazy_names

_MODULES = {
    ".database": ("DATABASE_URL_ENV", "LibraryStore", "database_url", "open_store"),
    ".filters": ("folder_range",),
    ".lock": ("LOCK_NAME", "LibraryBusy"),
    ".rows": ("FAILED", "MAX_RETRIES", "OK", "ModelRecord", "PictureRow", "PictureState", "retry_due", "utcnow"),
    ".schema": ("SCHEMA_VERSION",),
    ".sqlitefile": ("DB_NAME",),
    ".writes": ("copy_tags",),
}
__getattr__, __all__ = lazy_names(__name__, _MODULES)
