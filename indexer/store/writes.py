"""Every write to a library's rows, each one transaction: a crash at any instant leaves the rows as they were
before it or after it, never between.

Writers hold the library's writer lock (lock.py) around their run; these functions do not take it. A
transaction that changes a vector also bumps the library's generation, which the FAISS file records
(so a stale file is detected and rebuilt).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, delete, insert, update
from sqlalchemy.engine import Connection, Engine

from ..hashes import CONTENT_HASH
from .filters import folder_range
from .rows import utcnow
from .tables import library, picture_tags, pictures, roots, tag_runs, unreadable_folders

IDS_PER_STATEMENT = 500


def _chunks(values: Sequence, size: int = IDS_PER_STATEMENT):
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _stored(values: dict) -> dict:
    """A picture's values as the table holds them: the path as its bytes."""
    return {**values, "path": os.fsencode(values["path"])} if "path" in values else values


def _at_or_under(column, path: str):
    low, high = folder_range(path)
    return (column == os.fsencode(path)) | ((column >= low) & (column < high))


def _bump_generation(c: Connection) -> None:
    c.execute(update(library).values(generation=library.c.generation + 1))


class Writes:
    def __init__(self, engine: Engine):
        self.engine = engine

    def set_model(self, architecture: str, weights: str, fingerprint: str, weights_digest: str, dim: int) -> None:
        with self.engine.begin() as c:
            c.execute(insert(library).values(architecture=architecture, weights=weights, fingerprint=fingerprint,
                                             weights_digest=weights_digest, embed_dim=dim, created_at=utcnow(),
                                             generation=0, content_hash_kind=CONTENT_HASH))

    def set_inference(self, path: str) -> None:
        """The image tower's path (encoders/inference.py) that fills the library from now on."""
        with self.engine.begin() as c:
            c.execute(update(library).values(inference=path))

    def commit_batch(self, updates: Sequence[tuple[int, dict]], inserts: Sequence[dict]) -> list[int]:
        """One batch of the indexer: rows changed (by id) and rows added, with the generation bumped. Returns the
        new rows' ids, in the order given."""
        with self.engine.begin() as c:
            for picture_id, values in updates:
                c.execute(update(pictures).where(pictures.c.id == picture_id).values(**_stored(values)))
            ids = [c.execute(insert(pictures).values(**_stored(entry)).returning(pictures.c.id)).scalar_one()
                   for entry in inserts]
            _bump_generation(c)
        return ids

    def remove_pictures(self, ids: Iterable[int], forget_roots: Sequence[str] = ()) -> None:
        """Forget these rows with their tags, and these roots with the unreadable folders recorded under them."""
        ids = sorted(set(ids))
        with self.engine.begin() as c:
            for part in _chunks(ids):
                # The tags go explicitly: a library made before foreign keys were enforced does not cascade.
                c.execute(delete(picture_tags).where(picture_tags.c.picture_id.in_(part)))
                c.execute(delete(tag_runs).where(tag_runs.c.picture_id.in_(part)))
                c.execute(delete(pictures).where(pictures.c.id.in_(part)))
            for root in forget_roots:
                c.execute(delete(roots).where(roots.c.path == os.fsencode(root)))
                c.execute(delete(unreadable_folders).where(_at_or_under(unreadable_folders.c.path, root)))
            if ids:
                _bump_generation(c)

    def mark_indexed(self, indexed: Iterable[str], unreadable: dict[str, str]) -> None:
        """A run over these roots finished; ``unreadable`` (path → reason) replaces what earlier runs recorded
        under them."""
        now = utcnow()
        with self.engine.begin() as c:
            for root in indexed:
                path = os.fsencode(root)
                if c.execute(update(roots).where(roots.c.path == path).values(last_indexed_at=now)).rowcount == 0:
                    c.execute(insert(roots).values(path=path, last_indexed_at=now))
                c.execute(delete(unreadable_folders).where(_at_or_under(unreadable_folders.c.path, root)))
            if unreadable:
                c.execute(insert(unreadable_folders), [{"path": os.fsencode(path), "error": error, "seen_at": now}
                                                       for path, error in unreadable.items()])
            c.execute(update(library).values(last_indexed_at=now))

    def mark_index_saved(self, proof) -> None:
        """The FAISS file of ``proof.generation`` is in place (indexproof.IndexProof: what it holds)."""
        with self.engine.begin() as c:
            c.execute(update(library).values(index_generation=proof.generation, index_count=proof.count,
                                             index_dim=proof.dim, index_ids_digest=proof.ids_digest))

    def replace_tags(self, labelset: str, classified: Sequence[tuple[int, str | None, str | None, float]]) -> None:
        """Pictures classified against a label set: (picture id, content hash, tag or None, probability). Their
        earlier tags from this label set go; a picture keeps one row per tag (another set's same tag is replaced)."""
        ids = [picture_id for picture_id, *_ in classified]
        now = utcnow()
        with self.engine.begin() as c:
            for part in _chunks(ids):
                c.execute(delete(picture_tags).where(picture_tags.c.labelset == labelset,
                                                     picture_tags.c.picture_id.in_(part)))
                c.execute(delete(tag_runs).where(tag_runs.c.labelset == labelset, tag_runs.c.picture_id.in_(part)))
            tagged = [{"picture_id": i, "tag": tag, "score": score, "labelset": labelset}
                      for i, _, tag, score in classified if tag is not None]
            if tagged:
                c.execute(delete(picture_tags).where(picture_tags.c.picture_id == bindparam("id"),
                                                     picture_tags.c.tag == bindparam("t")),
                          [{"id": row["picture_id"], "t": row["tag"]} for row in tagged])
                c.execute(insert(picture_tags), tagged)
            if classified:
                c.execute(insert(tag_runs), [{"picture_id": i, "labelset": labelset, "content_hash": content_hash,
                                              "tagged_at": now} for i, content_hash, _, _ in classified])

    def replace_all_tags(self, pages: Iterable[Sequence[dict]]) -> int:
        """Every tag of the library becomes these ({picture_id, tag, score, labelset}, page by page), in one
        transaction: a re-embedded library gets its tags all at once, however often it is resumed."""
        count = 0
        with self.engine.begin() as c:
            c.execute(delete(picture_tags))
            for page in pages:
                if page:
                    c.execute(insert(picture_tags), list(page))
                    count += len(page)
        return count

    def rename_schemas(self, renames: Sequence[tuple[str, str]]) -> None:
        """PostgreSQL schemas renamed in order, in one transaction (DDL is transactional there)."""
        with self.engine.begin() as c:
            for old, new in renames:
                c.exec_driver_sql(f'ALTER SCHEMA "{old}" RENAME TO "{new}"')

    def retire_schema(self, schema: str, keep_as: str | None) -> None:
        """Drop a PostgreSQL schema and its tables, or rename it ``keep_as``, replacing one of that name."""
        with self.engine.begin() as c:
            if keep_as is not None:
                c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{keep_as}" CASCADE')
                c.exec_driver_sql(f'ALTER SCHEMA "{schema}" RENAME TO "{keep_as}"')
            else:
                c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def copy_tags(source, target) -> int:
    """Give the target library's pictures the tags the same paths carry in the source (a re-embedded library).

    Tags are the user's data, so they outlive the model that proposed them; which pictures a label set has
    classified (``tag_runs``) is bookkeeping of the old model and stays behind, so `search tag` with the new
    model classifies everything again. Returns the tags copied.
    """
    def pages():
        after = (b"", "")
        while rows := source.reads.tags_with_paths(after):
            ids = target.reads.ids_by_path(path for path, *_ in rows)
            yield [{"picture_id": ids[path], "tag": tag, "score": score, "labelset": labelset}
                   for path, tag, score, labelset in rows if path in ids]
            after = rows[-1][:2]

    return target.writes.replace_all_tags(pages())
