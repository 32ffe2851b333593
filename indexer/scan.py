"""Walk the library's roots and list the picture files in them, with size and mtime, and the folders
it could not look into (whose rows must then be kept: nothing unseen is deleted)."""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from encoders.images import picture_extensions

# Junk that photo managers, NAS boxes, OSes and tools leave inside picture folders.
DEFAULT_EXCLUDES = ("@eaDir", ".git", "node_modules", "._*", "System Volume Information", "$RECYCLE.BIN")


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime_ns: int
    # Set when the entry looks like a picture but cannot be one (broken link, FIFO, ...):
    # it is recorded as failed with this reason instead of being decoded.
    problem: str | None = None


@dataclass(frozen=True)
class UnreadableFolder:
    """A folder the scan could not list (permission denied, I/O error, stale mount), or an entry it could
    not even stat (a symlinked folder whose target is gone): what lies under it is unknown, not deleted."""

    path: str
    error: str


@dataclass(frozen=True)
class ScanOptions:
    excludes: tuple[str, ...] = ()
    include_hidden: bool = False
    follow_symlinks: bool = True


def _excluded(name: str, path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns)


def scan(roots: Iterable[str], options: ScanOptions = ScanOptions()) -> Iterator[ScannedFile | UnreadableFolder]:
    """Picture files under the roots (absolute paths as the user sees them, links not resolved), and
    every folder or entry that could not be read, with the reason.

    Symlinked folders are followed once: a folder already visited (same device and inode)
    is not entered again, which stops link loops.
    """
    extensions = picture_extensions()
    patterns = DEFAULT_EXCLUDES + tuple(options.excludes)
    visited: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.abspath(root)
        st = os.stat(root)
        if not stat.S_ISDIR(st.st_mode):
            if os.path.splitext(root)[1].lower() in extensions:
                yield ScannedFile(root, st.st_size, st.st_mtime_ns)
            continue
        stack = [root]
        visited.add((st.st_dev, st.st_ino))
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                yield UnreadableFolder(folder, _reason(e))
                continue
            for entry in entries:
                name = entry.name
                if (name.startswith(".") and not options.include_hidden) or _excluded(name, entry.path, patterns):
                    continue
                found = _classify(entry, extensions, options.follow_symlinks, visited)
                if isinstance(found, str):
                    stack.append(found)
                elif found is not None:
                    yield found


def _reason(error: OSError) -> str:
    return error.strerror or str(error)


def _classify(entry: os.DirEntry, extensions: frozenset[str], follow: bool,
              visited: set[tuple[int, int]]) -> str | ScannedFile | UnreadableFolder | None:
    """A folder to enter (its path), a file to index, an entry that could not be read, or None to ignore."""
    is_picture_name = os.path.splitext(entry.name)[1].lower() in extensions
    is_link = False
    try:
        is_link = entry.is_symlink()
        if is_link and not follow:
            return None
        st = entry.stat(follow_symlinks=True)
    except OSError as e:
        if is_link and is_picture_name:  # a link to a picture that is gone: recorded as failed, with why
            return ScannedFile(entry.path, 0, 0, problem=f"broken symbolic link ({_reason(e)})")
        # Maybe a folder (a link to an unplugged disk, a stale mount): what it held is unknown, so kept.
        return UnreadableFolder(entry.path, f"broken symbolic link ({_reason(e)})" if is_link else _reason(e))
    if stat.S_ISDIR(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if key in visited:
            return None
        visited.add(key)
        return entry.path
    if not is_picture_name:
        return None
    if not stat.S_ISREG(st.st_mode):
        return ScannedFile(entry.path, 0, st.st_mtime_ns, problem="not a regular file (device, FIFO or socket)")
    return ScannedFile(entry.path, st.st_size, st.st_mtime_ns)
