"""The product surface: the query engine, where libraries live, and the `search` command."""

from .library import LIBRARY_ENV, default_library_dir, resolve_library_dir

__all__ = ["QueryError", "SearchEngine", "SearchResult", "Term", "LIBRARY_ENV", "default_library_dir",
           "resolve_library_dir"]


def __getattr__(name: str):
    # The engine pulls in SQLAlchemy, FAISS and numpy (most of a second); `search --help` must not pay for it.
    if name in ("QueryError", "SearchEngine", "SearchResult", "Term"):
        from . import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
