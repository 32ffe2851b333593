"""Small JPEG previews of library pictures, made once and kept on disk beside the library.

Only rows of the library are ever opened: callers pass a row id, the path comes from the
database, and it must lie inside one of the library's folders (served.py). A preview is keyed
by row id, file size and modification time, so an edited picture gets a new one; JPEGs are
decoded at a reduced DCT scale (``decode_picture`` uses PIL's draft mode), so a page of 50
results never decodes 50 full-size photos, and a second page view decodes nothing at all.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from encoders.decode import read_file
from encoders.files import atomic_write
from indexer import DecodeError, Library, decode_picture

from .served import OutsideLibrary, inside_roots, real_roots

THUMB_DIR = "thumbs"
GRID_SIZE = 320  # longest side of a grid thumbnail
VIEW_SIZE = 1280  # longest side of the large view
JPEG_QUALITY = 85
# Previews that cannot be written to disk (read-only library) are kept in memory, within reason.
MEMORY_ITEMS = 512


class PreviewError(Exception):
    """The picture behind a row cannot be shown (moved, deleted, unreadable, outside the library's folders);
    the message says why."""


class Thumbnails:
    """Previews of one library's pictures, by row id."""

    def __init__(self, library: Library, folder: str | os.PathLike | None = None):
        self.library = library
        self.folder = Path(folder) if folder is not None else Path(library.folder) / THUMB_DIR
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.made = 0  # previews decoded from the original file (the rest came from the cache)

    def get(self, row_id: int, size: int = GRID_SIZE) -> bytes:
        """JPEG bytes of the row's picture, at most ``size`` pixels on its longest side."""
        row = self.library.store.reads.pictures([int(row_id)]).get(int(row_id))
        return self._get(row_id, row.path if row is not None else None, size, real_roots(self.library))

    def get_many(self, row_ids: list[int], size: int = GRID_SIZE, workers: int = 4) -> dict[int, bytes | PreviewError]:
        """Previews of a page of results: one database query, missing ones made in parallel
        (decoding releases the GIL); a picture that cannot be shown maps to its PreviewError."""
        rows = self.library.store.reads.pictures(int(i) for i in row_ids)
        roots = real_roots(self.library)

        def one(row_id: int) -> bytes | PreviewError:
            row = rows.get(int(row_id))
            try:
                return self._get(row_id, row.path if row is not None else None, size, roots)
            except PreviewError as e:
                return e

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(row_ids)))) as pool:
            return dict(zip(row_ids, pool.map(one, row_ids), strict=True))

    def _get(self, row_id: int, path: str | None, size: int, roots: list[str]) -> bytes:
        if path is None:
            raise PreviewError(f"picture #{row_id} is no longer in the library")
        try:
            real = inside_roots(path, roots)  # before the cache too: no preview of an outside file is served
        except OutsideLibrary as e:
            raise PreviewError(str(e)) from None
        try:
            st = os.stat(real)
        except OSError as e:
            raise PreviewError(f"{path} cannot be read: {e.strerror or e}") from e
        name = f"{row_id}-{size}-{st.st_size}-{st.st_mtime_ns}.jpg"
        cached = self._read(name)
        if cached is not None:
            return cached
        data = make_preview(real, size, shown=path)
        with self._lock:
            self.made += 1
        self._write(name, data, stale_prefix=f"{row_id}-{size}-")
        return data

    def _read(self, name: str) -> bytes | None:
        with self._lock:
            if name in self._memory:
                self._memory.move_to_end(name)
                return self._memory[name]
        try:
            return (self.folder / name).read_bytes()
        except OSError:
            return None

    def _write(self, name: str, data: bytes, stale_prefix: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            for old in self.folder.glob(f"{stale_prefix}*.jpg"):  # earlier versions of an edited picture
                old.unlink(missing_ok=True)
            # Several sessions may make the same preview at once, and a writer may be indexing: each writes a
            # file of its own and renames it into place, so no lock is needed and no preview is ever torn.
            atomic_write(self.folder / name, lambda tmp: Path(tmp).write_bytes(data))
        except OSError:
            with self._lock:
                self._memory[name] = data
                while len(self._memory) > MEMORY_ITEMS:
                    self._memory.popitem(last=False)


def make_preview(path: str | os.PathLike, size: int, shown: str | os.PathLike | None = None) -> bytes:
    """Decode a picture (early-reduced, upright, RGB on white) and encode a JPEG preview.

    The read is the decoder's (a regular file, within its byte cap) and so is the decode (its pixel
    and memory bounds); ``shown`` is the path the messages name (the row's, when ``path`` is its real path).
    """
    shown = shown or path
    try:
        data = read_file(os.fspath(path))
        # min_side = size // 2 keeps a preview of the longest side `size` sharp for any aspect up to 2:1.
        image = decode_picture(data, max(1, size // 2)).image
    except OSError as e:
        raise PreviewError(f"{shown} cannot be read: {e.strerror or e}") from e
    except DecodeError as e:
        raise PreviewError(f"{shown} cannot be shown: {e}") from e
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()
