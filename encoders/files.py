"""Files a user names, read within bounds, and files this program writes for itself, written atomically.

Reading: a regular file only (never a FIFO or device, which could block or never end), and never more bytes
than a cap, checked before reading: pictures (``encoders.decode.read_file``) and small text files (prompt
templates, zero-shot labels).

Writing (``atomic_write``: FAISS indexes, previews, ONNX towers, checkpoints): a reader (another process, the
next run) sees the old file or the new one whole, never half of one, whatever crashes or runs alongside.

Imports nothing heavy and nothing of the project: the query path reads a templates file through it without
torch, and the indexer writes its FAISS file through it without importing the models.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

MAX_TEXT_BYTES = 1 << 20  # 1 MiB: thousands of labels or templates; /dev/zero or a video is refused at once
MAX_TEXT_LINES = 10_000


class InputFileError(ValueError):
    """A file that cannot be used as asked; the message is one line saying why."""


def read_regular_file(path: str | os.PathLike, max_bytes: int, too_large: str = "file too large") -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; InputFileError otherwise, OSError when unreadable.

    Anything else is refused before it is opened (opening a device can act: a watchdog, a tape, a
    terminal); the open itself is non-blocking and checked again, so a FIFO or device that replaced the
    file meanwhile is refused instead of waited on. A file that grows past the cap while read is refused.
    """
    _check_regular(os.stat(path), max_bytes, too_large)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
    try:
        _check_regular(os.fstat(fd), max_bytes, too_large)
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 22, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise InputFileError(f"{too_large} (it grew past {max_bytes:,} bytes while being read)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_regular(st: os.stat_result, max_bytes: int, too_large: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError("a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError("not a regular file (device, FIFO or socket)")
    if st.st_size > max_bytes:
        raise InputFileError(f"{too_large} ({st.st_size:,} bytes; the limit is {max_bytes:,})")


def read_text_entries(path: str | os.PathLike, what: str, max_bytes: int = MAX_TEXT_BYTES,
                      max_lines: int = MAX_TEXT_LINES) -> list[tuple[int, str]]:
    """(line number, text) of each entry of a small UTF-8 text file: one per line, stripped, blank lines
    and ``#`` comments left out. ``what`` names the file in messages ("templates file")."""
    try:
        data = read_regular_file(path, max_bytes, too_large="too large")
    except InputFileError as e:
        raise InputFileError(f"cannot use {path} as a {what}: {e}") from None
    except OSError as e:
        raise InputFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise InputFileError(f"{what} {path} is not a text file (it holds NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{what} {path} is not UTF-8 text (byte {e.start:,} cannot be read)") from None
    lines = text.splitlines()
    if len(lines) > max_lines:
        raise InputFileError(f"{what} {path} has {len(lines):,} lines; the limit is {max_lines:,}")
    return [(number, line.strip()) for number, line in enumerate(lines, 1)
            if line.strip() and not line.lstrip().startswith("#")]


# -- writing ---------------------------------------------------------------------------------------------


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> None:
    """``write(path)`` fills a temporary file beside ``target`` (made empty, by name: FAISS, torch and safetensors
    write by name); then it replaces ``target`` in one step.

    The temporary file has a unique name (concurrent writers of the same file never share one); it is flushed to
    disk, renamed over the target, and the rename flushed too (the folder's entry), so that after a power cut the
    file is the old one or the new one. On any error the temporary file is removed."""
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
