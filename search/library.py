"""Where a library lives: --library, else $SEARCH_LIBRARY, else the per-user data folder (XDG)."""

from __future__ import annotations

import os
from pathlib import Path

LIBRARY_ENV = "SEARCH_LIBRARY"


def default_library_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "clipsearch" / "library"


def resolve_library_dir(option: str | os.PathLike | None = None) -> Path:
    chosen = option or os.environ.get(LIBRARY_ENV)
    return Path(chosen).expanduser().absolute() if chosen else default_library_dir()
