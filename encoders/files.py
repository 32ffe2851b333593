"""Reading a file a user names: a regular file only (never a FIFO or device, which could block or never
end), and never more bytes than a cap, checked before reading.

Pictures (``encoders.decode.read_file``) and small text files (prompt templates, zero-shot labels). Imports
nothing heavy: the query path reads a templates file through it without torch.
"""

from __future__ import annotations

import os
import stat

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
