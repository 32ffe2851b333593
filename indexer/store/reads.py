"""Every read of a library's rows: the one read API the indexer, the engine, the tools and the page use.

Each call reads on its own; ``with reads.snapshot() as r:`` makes several calls see one state of the
library (a writer committing meanwhile is seen by none of them). Statements are written once for
SQLite and PostgreSQL (dialects.py says how they differ) and run on the databases' own DB-API modules.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..hashes import CONTENT_HASH
from . import filters as sql_filters
from .rows import FAILED, OK, ModelRecord, PictureRow, PictureState, as_path, retry_due
from .schema import VERSION_TABLE

PICTURE_COLUMNS = "id, path, size, mtime_ns, content_hash, width, height, taken_at, status, error"
MODEL_COLUMNS = ("architecture, weights, fingerprint, weights_digest, embed_dim, generation, index_generation, "
                 "last_indexed_at, index_count, index_dim, index_ids_digest, inference")
IDS_PER_STATEMENT = 500  # ids in one `IN (...)`, well within SQLite's and PostgreSQL's parameter limits


def _chunks(values: Sequence, size: int = IDS_PER_STATEMENT) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class Reads:
    def __init__(self, connections, connection=None):
        self._connections = connections
        self._connection = connection  # inside a snapshot: every read on this one

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Reads]:
        if self._connection is not None:
            yield self
            return
        with self._connections.snapshot() as connection:
            yield Reads(self._connections, connection)

    def _all(self, sql: str, params: Sequence = ()) -> list[tuple]:
        if self._connection is not None:
            return self._connections.execute(self._connection, sql, params).fetchall()
        with self._connections.lent() as connection:
            return self._connections.execute(connection, sql, params).fetchall()

    def _one(self, sql: str, params: Sequence = ()):
        rows = self._all(sql, params)
        return rows[0] if rows else None

    # -- the library -----------------------------------------------------------------------

    def model(self) -> ModelRecord | None:
        row = self._one(f"SELECT {MODEL_COLUMNS} FROM library ORDER BY id LIMIT 1")
        return ModelRecord.from_db(row) if row else None

    def counts(self) -> dict[str, int]:
        counts = dict(self._all("SELECT status, count(*) FROM pictures GROUP BY status"))
        return {"pictures": counts.get(OK, 0), "failed": counts.get(FAILED, 0)}

    def roots(self) -> list[str]:
        return [as_path(path) for (path,) in self._all("SELECT path FROM roots ORDER BY path")]

    def roots_at_or_under(self, path: str) -> list[str]:
        where, params = sql_filters.at_or_under(path)
        return [as_path(p) for (p,) in self._all(f"SELECT path FROM roots WHERE {where} ORDER BY path", params)]

    def unreadable_folders(self) -> list[dict]:
        """Folders the last runs could not read ({path, error, pictures_kept}), with the rows now kept under each."""
        with self.snapshot() as r:
            folders = r._all("SELECT path, error FROM unreadable_folders ORDER BY path")
            return [{"path": as_path(path), "error": error, "pictures_kept": r.count_at_or_under(as_path(path))}
                    for path, error in folders]

    def failed_files(self) -> list[dict]:
        """Every file that could not be indexed: {path, error, retries (runs that tried it again), retry (the
        next run tries it again: the failure may be transient)}."""
        rows = self._all("SELECT path, error, attempts, transient FROM pictures WHERE status = ? ORDER BY path",
                         [FAILED])
        return [{"path": as_path(path), "error": error, "retries": max(attempts - 1, 0),
                 "retry": retry_due(FAILED, transient, attempts)} for path, error, attempts, transient in rows]

    def failures(self) -> list[tuple[str, str]]:
        """(path, reason) of every file that could not be indexed."""
        return [(f["path"], f["error"]) for f in self.failed_files()]

    def server_tables_and_revision(self, schema_name: str) -> tuple[set[str], str | None]:
        """The tables of a PostgreSQL schema, and the Alembic revision they are at (schema.schema_of)."""
        with self.snapshot() as r:
            tables = {name for (name,) in r._all("SELECT table_name FROM information_schema.tables "
                                                  "WHERE table_schema = ?", [schema_name])}
            row = r._one(f"SELECT version_num FROM {VERSION_TABLE}") if VERSION_TABLE in tables else None
        return tables, row[0] if row else None

    # -- pictures -----------------------------------------------------------------------------

    def pictures(self, ids: Iterable[int], vectors: bool = False) -> dict[int, PictureRow]:
        """The rows with these ids (those that exist), by id; with their vectors when asked."""
        columns = PICTURE_COLUMNS + (", vector" if vectors else "")
        out: dict[int, PictureRow] = {}
        for part in _chunks(sorted({int(i) for i in ids})):
            for row in self._all(f"SELECT {columns} FROM pictures WHERE id IN ({_marks(len(part))})", part):
                out[row[0]] = PictureRow.from_db(row)
        return out

    def picture_by_path(self, path: str) -> PictureRow | None:
        row = self._one(f"SELECT {PICTURE_COLUMNS}, vector FROM pictures WHERE path = ?", [os.fsencode(path)])
        return PictureRow.from_db(row) if row else None

    def count_at_or_under(self, path: str) -> int:
        where, params = sql_filters.at_or_under(path)
        return self._one(f"SELECT count(*) FROM pictures WHERE {where}", params)[0]

    def ids_at_or_under(self, path: str) -> list[int]:
        where, params = sql_filters.at_or_under(path)
        return [i for (i,) in self._all(f"SELECT id FROM pictures WHERE {where} ORDER BY id", params)]

    def count_with_hash(self, content_hash: str) -> int:
        """Embedded rows holding exactly these bytes."""
        return self._one("SELECT count(*) FROM pictures WHERE content_hash = ? AND status = ?",
                         [content_hash, OK])[0]

    def matching_ids(self, filters) -> np.ndarray:
        """Ids of the embedded rows a filter (filters.FilterValues) lets a query return."""
        where, params = sql_filters.where(filters, self._connections.dialect)
        return np.fromiter((i for (i,) in self._all(f"SELECT id FROM pictures WHERE {where}", params)),
                           dtype=np.int64)

    def export_rows(self, after: int, limit: int, vectors: bool = False) -> list[PictureRow]:
        """Up to ``limit`` rows (failed ones too) with ids above ``after``, in id order."""
        columns = PICTURE_COLUMNS + (", vector" if vectors else "")
        return [PictureRow.from_db(row) for row in self._all(
            f"SELECT {columns} FROM pictures WHERE id > ? ORDER BY id LIMIT ?", [after, limit])]

    # -- vectors ------------------------------------------------------------------------------

    def iter_vectors(self, dim: int, chunk: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every embedded picture, in chunks, ordered by id."""
        last = -1
        while True:
            rows = self._all("SELECT id, vector FROM pictures WHERE status = ? AND id > ? ORDER BY id LIMIT ?",
                             [OK, last, chunk])
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(bytes(r[1]) for r in rows), dtype=np.float32).reshape(len(rows), dim)
            last = int(ids[-1])
            yield ids, vectors

    def stored_vectors(self, ids: Iterable[int]) -> dict[int, bytes]:
        """Vector bytes of these embedded rows, by id."""
        out: dict[int, bytes] = {}
        for part in _chunks(sorted({int(i) for i in ids})):
            out.update((i, bytes(v)) for i, v in self._all(
                f"SELECT id, vector FROM pictures WHERE status = ? AND id IN ({_marks(len(part))})", [OK, *part]))
        return out

    # -- what the indexer compares against ------------------------------------------------------

    def states_under(self, roots: Iterable[str]) -> dict[str, PictureState]:
        """Rows whose path is any of the roots or lies inside one."""
        states: dict[str, PictureState] = {}
        for root in roots:
            where, params = sql_filters.at_or_under(root)
            for row in self._all("SELECT id, path, size, mtime_ns, content_hash, status, attempts, transient "
                                 f"FROM pictures WHERE {where}", params):
                state = PictureState(row[0], as_path(row[1]), *row[2:7], bool(row[7]))
                states[state.path] = state
        return states

    def content_hashes(self) -> set[str]:
        """Content hashes of every embedded picture."""
        return {h for (h,) in self._all("SELECT content_hash FROM pictures WHERE status = ?", [OK]) if h}

    def content_hash_kind(self) -> str:
        """The hash this library's rows are made with (hashes.CONTENT_HASHES); the current one before the
        library records its model."""
        row = self._one("SELECT content_hash_kind FROM library ORDER BY id LIMIT 1")
        return row[0] if row else CONTENT_HASH

    def embedded_copy(self, content_hash: str) -> dict | None:
        """Vector and picture facts of an embedded file with these exact bytes, to copy to a duplicate."""
        row = self._one("SELECT vector, width, height, taken_at FROM pictures WHERE content_hash = ? AND status = ? "
                        "LIMIT 1", [content_hash, OK])
        if row is None:
            return None
        picture = PictureRow.from_db((0, b"", 0, 0, None, row[1], row[2], row[3], OK, None, row[0]))
        return {"vector": picture.vector, "width": picture.width, "height": picture.height,
                "taken_at": picture.taken_at}

    def ids_by_path(self, paths: Iterable[bytes]) -> dict[bytes, int]:
        """Row ids of these paths (as bytes), for those the library holds."""
        out: dict[bytes, int] = {}
        for part in _chunks(sorted(set(paths))):
            out.update((bytes(p), i) for p, i in self._all(
                f"SELECT path, id FROM pictures WHERE path IN ({_marks(len(part))})", part))
        return out

    # -- tags ---------------------------------------------------------------------------------

    def known_tags(self) -> list[str]:
        return [tag for (tag,) in self._all("SELECT DISTINCT tag FROM picture_tags ORDER BY tag")]

    def tag_counts(self, labels: Sequence[str] | None = None) -> dict[str, int]:
        """Pictures per tag: of these labels (0 for a label no picture carries), else of every tag."""
        counts = dict(self._all("SELECT tag, count(*) FROM picture_tags GROUP BY tag"))
        return {label: counts.get(label, 0) for label in labels} if labels is not None else counts

    def tags_of(self, ids: Iterable[int]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for part in _chunks(sorted({int(i) for i in ids})):
            for picture_id, tag in self._all(f"SELECT picture_id, tag FROM picture_tags WHERE picture_id IN "
                                             f"({_marks(len(part))}) ORDER BY tag", part):
                out.setdefault(picture_id, []).append(tag)
        return out

    def tag_runs(self, labelset: str) -> dict[int, str | None]:
        """Pictures already classified against this label set, with the content hash they had then."""
        return dict(self._all("SELECT picture_id, content_hash FROM tag_runs WHERE labelset = ?", [labelset]))

    def tags_with_paths(self, after: tuple[bytes, str] = (b"", ""), limit: int = 5000) -> list[tuple]:
        """(path bytes, tag, score, labelset) of tags, in (path, tag) order from just after ``after``: the tags
        to carry into a re-embedded library, page by page."""
        return [(bytes(path), tag, score, labelset) for path, tag, score, labelset in self._all(
            "SELECT p.path, t.tag, t.score, t.labelset FROM picture_tags t JOIN pictures p ON p.id = t.picture_id "
            "WHERE (p.path, t.tag) > (?, ?) ORDER BY p.path, t.tag LIMIT ?", [*after, limit])]
