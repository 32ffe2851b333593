"""Files this program writes for itself, written atomically: a reader (another process, the next run) sees the
old file or the new one whole, never half of one, whatever crashes or runs alongside.

Written to a temporary file of a unique name beside the target (so concurrent writers of the same file never
share one), flushed to disk, renamed over the target, and the rename itself flushed (the folder's entry), so
that after a power cut the file is the old one or the new one. On any error the temporary file is removed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(path)`` fills a temporary file beside ``target`` (made empty, by name: FAISS, torch and safetensors
    write by name); then it replaces ``target`` in one step."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file(target)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(target.parent)


def _new_file(target: Path) -> str:
    """An empty file of a unique name beside ``target``, with the permissions the umask gives any new file
    (mkstemp's 0600 would make a shared library's FAISS file or an export unreadable to the others)."""
    while True:
        tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a filesystem that cannot open folders: the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
