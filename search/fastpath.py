"""`search query` without torch: the library's ONNX text tower, its saved FAISS file and plain SQLite.

Used by the CLI when everything it needs is there and current; otherwise it answers None
and the CLI takes the PyTorch path (``SearchEngine``), which gives the same results (the
ONNX tower is verified against PyTorch when exported) and prepares this path for next time.
Imports only numpy, faiss, onnxruntime, regex and sqlite3: a whole query takes ~1 s instead
of ~6+ s.

Falls back (returns None) when: the database is not the library's SQLite file, the library
was made by an older release (the engine upgrades it), the tower has not been exported for
the library's model, a picture term is not an unchanged library file (it would need the image
tower), or the FAISS file is not current or not proven to be this library's (a reader does
not rebuild it from rows: the engine does). A library that cannot be used at all (damaged,
foreign, newer, unreadable) is refused here, with the engine's message, without loading torch.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from indexer.indexproof import INDEX_PATTERN, IndexProof, belongs
from indexer.store import filters as filter_sql
from indexer.store import sqlitefile as librarydb
from indexer.store.database import DATABASE_URL_ENV
from indexer.store.dialects import SQLite
from indexer.store.schema import SCHEMA_VERSION

from .filters import Filters, unknown_tags_message
from .terms import SearchResult, Term, combine, ensemble_mean, finish, own_picture_first

DISABLE_ENV = "SEARCH_NO_FAST_PATH"
MISSING_TAG_TABLE = "no such table: picture_tags"


class FastQueryError(Exception):
    """A query the fast path understood but cannot answer as asked (the CLI reports it, like the engine)."""


class _Row:
    __slots__ = ("id", "path", "size", "mtime_ns", "width", "height", "taken_at")

    def __init__(self, id, path, size, mtime_ns, width, height, taken_at):
        self.id, self.size, self.mtime_ns, self.width, self.height = id, size, mtime_ns, width, height
        self.path = os.fsdecode(bytes(path))
        self.taken_at = datetime.fromisoformat(taken_at) if isinstance(taken_at, str) else taken_at


def _connect(folder: Path) -> sqlite3.Connection | None:
    """A read-only connection to the library's file at this release's schema; raises LibraryError for one that
    cannot be used."""
    if os.environ.get(DATABASE_URL_ENV):
        return None
    db = librarydb.locate(folder)
    if db is None:
        raise librarydb.no_library(folder)
    try:
        connection, schema = librarydb.open_for_reading(db)
    except sqlite3.Error:
        return None
    if schema < SCHEMA_VERSION:
        connection.close()
        return None
    connection.isolation_level = None  # the BEGIN below is ours
    return connection


def query(folder: str | os.PathLike, terms: Sequence[Term], top_k: int = 10, filters: Filters | None = None,
          min_score: float | None = None, sort: str = "score", ensemble: bool = False,
          templates: Sequence[str] | None = None) -> list[SearchResult] | None:
    """The results, or None when this path cannot answer and the PyTorch path must.

    Same meaning as ``SearchEngine.query``; ``ensemble`` without ``templates`` uses the
    paper's 80 templates (recorded beside the exported tower).
    """
    if os.environ.get(DISABLE_ENV):
        return None
    from .textonnx import OnnxTextEncoder, onnx_available

    folder = Path(folder)
    if not onnx_available():
        return None
    connection = _connect(folder)
    if connection is None:
        return None
    try:
        connection.execute("BEGIN")  # one consistent snapshot for every read below (WAL)
        record = connection.execute("SELECT fingerprint, embed_dim, generation, index_generation, index_count, "
                                    "index_dim, index_ids_digest FROM library LIMIT 1").fetchone()
        if record is None:
            return None
        fingerprint, dim, generation = record[:3]
        proof = IndexProof(*record[3:]) if None not in record[3:] else None
        vectors = []
        for term in terms:
            if isinstance(term.value, np.ndarray):
                vectors.append(np.asarray(term.value, dtype=np.float32))
            elif term.picture():
                stored = _stored_vector(connection, term.value)
                if stored is None:
                    return None
                vectors.append(stored)
            else:
                vectors.append(None)
        texts = [str(t.value) for t, v in zip(terms, vectors, strict=False) if v is None]
        if texts:
            encoder = OnnxTextEncoder.for_library(folder, fingerprint)
            if encoder is None:
                return None
            if ensemble and not templates:
                templates = encoder.meta.get("templates")
                if not templates:
                    return None
            if ensemble:
                text_vectors = [ensemble_mean(encoder.encode_texts([t.format(text) for t in templates]))
                                for text in texts]
            else:
                text_vectors = list(encoder.encode_texts(texts))
            vectors = [v if v is not None else text_vectors.pop(0) for v in vectors]
        vector = combine(vectors, [t.weight for t in terms])
        index = _current_index(connection, folder, generation, proof, dim)
        if index is None:
            return None
        within = None
        filters = filters or Filters()
        if filters:
            where, params = filter_sql.where(filters, SQLite)
            params = SQLite.parameters(params)
            try:
                _check_tags(connection, filters.tags)
                cursor = connection.execute(f"SELECT id FROM pictures WHERE {where}", params)
                within = np.fromiter((r[0] for r in cursor), dtype=np.int64)
            except sqlite3.OperationalError as e:
                if MISSING_TAG_TABLE in str(e):
                    raise FastQueryError(unknown_tags_message(filters.tags, [])) from None
                raise
        extra = _copies_of(connection, terms)
        scores, ids = _search(index, vector, top_k + extra, within)
        rows = _rows(connection, [int(i) for i in ids if i >= 0])
    except sqlite3.Error:
        return None
    finally:
        connection.close()
    results = [SearchResult.from_row(rows[int(i)], s) for s, i in zip(scores, ids, strict=False) if int(i) in rows]
    return finish(own_picture_first(results, terms)[:top_k], min_score, sort)


def _check_tags(connection: sqlite3.Connection, tags: Sequence[str]) -> None:
    known = [r[0] for r in connection.execute("SELECT DISTINCT tag FROM picture_tags ORDER BY tag")] if tags else []
    message = unknown_tags_message(tags, known)
    if message:
        raise FastQueryError(message)


def _copies_of(connection: sqlite3.Connection, terms: Sequence[Term]) -> int:
    """Exact duplicates tie with a queried library file; fetch them all so it can be put first."""
    pictures = [t for t in terms if t.picture()]
    if len(pictures) != 1 or not isinstance(pictures[0].value, (str, os.PathLike)):
        return 0
    row = connection.execute("SELECT content_hash FROM pictures WHERE path = ?",
                             (os.fsencode(os.path.abspath(pictures[0].value)),)).fetchone()
    if row is None or row[0] is None:
        return 0
    return connection.execute("SELECT count(*) FROM pictures WHERE content_hash = ? AND status = 'ok'",
                              (row[0],)).fetchone()[0] - 1


def _stored_vector(connection: sqlite3.Connection, value) -> np.ndarray | None:
    path = os.path.abspath(value) if isinstance(value, (str, os.PathLike)) else None
    if path is None:
        return None
    row = connection.execute("SELECT vector, size, mtime_ns FROM pictures WHERE path = ? AND status = 'ok'",
                             (os.fsencode(path),)).fetchone()
    if row is None or row[0] is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_size, st.st_mtime_ns) != (row[1], row[2]):
        return None
    return np.frombuffer(row[0], dtype=np.float32)


def _current_index(connection, folder: Path, generation: int, proof: IndexProof | None, dim: int):
    """The saved FAISS file, when it is proven to hold this generation of this library's rows."""
    import faiss

    path = folder / INDEX_PATTERN.format(generation=generation)
    if proof is None or proof.generation != generation or not path.is_file():
        return None
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        return None  # replaced by a writer meanwhile
    count = connection.execute("SELECT count(*) FROM pictures WHERE status = 'ok'").fetchone()[0]
    return index if belongs(index, proof, generation, count, dim, lambda ids: _stored_vectors(connection, ids)) \
        else None


def _stored_vectors(connection: sqlite3.Connection, ids: Sequence[int]) -> dict[int, bytes]:
    marks = ",".join("?" * len(ids))
    return dict(connection.execute(f"SELECT id, vector FROM pictures WHERE id IN ({marks}) AND status = 'ok'",
                                   list(ids)).fetchall())


def busy() -> bool:
    """More runnable work than cores: extra threads then mostly wait for a core."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def _search(index, vector: np.ndarray, k: int, within: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    # One query: one thread. Measured at 100k / 1M vectors (d=512, 2 cores): 8.8 / 78 ms with one
    # thread, 14.5 / 153 ms with two on an idle machine, 20 / 330 vs 96 / 910 ms on a busy one.
    faiss.omp_set_num_threads(1)

    k = min(k, index.ntotal if within is None else len(within))
    if k <= 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    query = np.ascontiguousarray(vector[None], dtype=np.float32)
    if within is None:
        scores, ids = index.search(query, k)
    else:
        selector = faiss.IDSelectorBatch(np.ascontiguousarray(within, dtype=np.int64))
        scores, ids = index.search(query, k, params=faiss.SearchParameters(sel=selector))
    return scores[0], ids[0]


def _rows(connection: sqlite3.Connection, ids: list[int]) -> dict[int, _Row]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    cursor = connection.execute(
        f"SELECT id, path, size, mtime_ns, width, height, taken_at FROM pictures WHERE id IN ({marks})", ids)
    return {r[0]: _Row(*r) for r in cursor}
