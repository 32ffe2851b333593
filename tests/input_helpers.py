"""Helpers for the hostile-input tests: a library's full state, commands under a memory limit, big PNGs
written without holding their pixels, and the checks every refusal must pass."""

from __future__ import annotations

import hashlib
import os
import resource
import sqlite3
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from conftest import ROOT

GIB = 1 << 30
# Address space for a `search` command: one that imports torch reserves ~4.4 GB here (measured with
# VmPeak), a text query in ONNX Runtime ~0.6 GB. An unbounded read (/dev/zero, a 20 GB file, a picture decoded at
# full size several times over) runs into the limit and fails the test instead of the machine.
CLI_MEMORY_LIMIT = 6 * GIB
RANDOM_WEIGHTS_WARNING = "warning: RANDOM WEIGHTS:"


def snapshot(folder: Path) -> tuple[dict, dict]:
    """Every row of every table of the library's database (vectors included), and the bytes of its FAISS files."""
    connection = sqlite3.connect(f"{(folder / 'library.db').as_uri()}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: connection.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}
    finally:
        connection.close()
    faiss = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.faiss"))}
    assert rows.get("pictures") and faiss, f"not a library with pictures: {folder}"
    return rows, faiss


def run_limited(*args: str, limit: int = CLI_MEMORY_LIMIT, env: dict | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """`search ...` in a subprocess whose address space is capped (RLIMIT_AS, as `ulimit -v`)."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "search.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout, preexec_fn=cap)


def python_limited(code: str, *args: str, limit: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -c code args`` under the same kind of cap."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, preexec_fn=cap)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and one line on stderr, beginning "error:", holding every fragment; no traceback.
    (The tiny model's own warning may come first, when the model was loaded before the refusal.)"""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(RANDOM_WEIGHTS_WARNING)]
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error:"), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


PNG_KINDS = {"L": (0, b"\x80"), "RGB": (2, b"\x10\x80\xf0"), "P": (3, b"\x00"), "RGBA": (6, b"\x10\x80\xf0\x80")}


def solid_png(path: Path, width: int, height: int, mode: str) -> Path:
    """A real, valid PNG of one colour, written without holding its pixels: 196 MP of RGBA is a 0.8 MB
    file (the issue's "762 KB PNG of 196 MP").

    The deflate stream is one block of rows compressed after a full flush (which makes the compressor
    forget what it saw, so the same rows give the same bytes), repeated, then an empty final block and
    the checksum of all rows: a second, not minutes of zlib.
    """
    colour_type, pixel = PNG_KINDS[mode]
    row = b"\0" + pixel * width
    per_block = max(1, min(height, (1 << 22) // len(row)))
    blocks, rest = divmod(height, per_block)
    compressor = zlib.compressobj(9)
    first = compressor.compress(row * per_block) + compressor.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    again = compressor.compress(row * per_block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.compress(row * rest) + compressor.flush(zlib.Z_FULL_FLUSH) if rest else b""
    checksum = 1
    for _ in range(height):
        checksum = zlib.adler32(row, checksum)
    data = first + again * (blocks - 1) + last + b"\x03\x00" + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    palette = _chunk(b"PLTE", b"\x10\x80\xf0") if mode == "P" else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + palette + _chunk(b"IDAT", data)
                     + _chunk(b"IEND", b""))
    return path
