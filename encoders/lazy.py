"""A package's public names, each loaded from its module on first use (PEP 562).

``import indexer`` or ``import encoders`` must stay light: `search query` reads a library without torch, and
`search --help` without SQLAlchemy or FAISS. A package lists where each name lives; the module is imported
the first time the name is asked for, then the name is kept in the package like any other.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module


def lazy_names(package: str, modules: dict[str, tuple[str, ...]], submodules: dict[str, str] | None = None
               ) -> tuple[Callable[[str], object], list[str]]:
    """(the package's ``__getattr__``, its ``__all__``) for names in ``modules`` ({module: names}; a module
    starting with "." is the package's own) and ``submodules`` ({name: a whole module})."""
    home = {name: module for module, names in modules.items() for name in names}
    whole = dict(submodules or {})

    def __getattr__(name: str):
        if name in whole:
            value = import_module(whole[name])
        elif name in home:
            value = getattr(import_module(home[name], package), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__, [*whole, *home]
