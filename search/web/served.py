"""Which files the page may read: rows of its library that lie inside one of the library's folders.

A library.db is only a file: one written by someone else can hold a row, or a symlink under
an indexed folder, that leads to a private file. Real paths are compared (symlinks and ``..``
resolved), and the caller opens the resolved path, so what was checked is what is read.
"""

from __future__ import annotations

import os


class OutsideLibrary(Exception):
    """A row whose file lies outside the library's folders; the message says so, for the picture's card."""


def real_roots(library) -> list[str]:
    """The library's indexed folders, symlinks resolved."""
    return [os.path.realpath(root) for root in library.store.reads.roots()]


def inside_roots(path: str, roots: list[str]) -> str:
    """The real path of a row's file when it lies inside one of ``roots`` (real paths); else OutsideLibrary."""
    real = os.path.realpath(path)
    for root in roots:
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return real
    raise OutsideLibrary(f"{path} is not shown: it lies outside the folders this library indexes")
