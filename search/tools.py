"""Library tools: near-duplicate groups, zero-shot tags, forgetting files or roots, export for other tools."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from encoders import PAPER_TEMPLATES
from encoders.files import read_text_entries
from indexer import Library, LibraryError

from .output import json_bytes
from .terms import TermError, check_text

if TYPE_CHECKING:
    from encoders import TextEncoder

# -- duplicates ---------------------------------------------------------------------------------


@dataclass
class DuplicateMember:
    id: int
    path: str
    score: float  # cosine to the group's first member
    exact: bool  # byte-identical to another member
    size: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DuplicateGroup:
    members: list[DuplicateMember] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"size": len(self.members), "exact": all(m.exact for m in self.members),
                "members": [m.to_dict() for m in self.members]}


class _UnionFind:
    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def find_duplicates(library: Library, threshold: float = 0.95, chunk: int = 4096) -> list[DuplicateGroup]:
    """Groups of pictures whose vectors are within ``threshold`` cosine of each other, largest first.

    FAISS range search of every vector against the index gives the pairs; connected
    components of those pairs are the groups (so A~B and B~C group A, B, C). Each member's
    score is its cosine to the group's first member (the one with most close neighbours);
    ``exact`` marks byte-identical files (same content hash).
    """
    if not -1.0 <= threshold <= 1.0:
        raise LibraryError(f"--threshold {threshold} is not a cosine similarity (between -1 and 1)")
    record = library.model
    if record is None:
        raise LibraryError(f"the library at {library.folder} is empty")
    index = library.vector_index(writer=False).index
    links = _UnionFind()
    degree: dict[int, int] = {}
    reads = library.store.reads
    for ids, vectors in reads.iter_vectors(record.embed_dim, chunk=chunk):
        lims, _, found = index.range_search(np.ascontiguousarray(vectors), float(threshold))
        for row, own in enumerate(ids.tolist()):
            for other in found[lims[row]:lims[row + 1]].tolist():
                if other != own:
                    links.union(own, other)
                    degree[own] = degree.get(own, 0) + 1
    components: dict[int, list[int]] = {}
    for node in degree:
        components.setdefault(links.find(node), []).append(node)
    groups = []
    for members in components.values():
        rows = reads.pictures(members, vectors=True)
        vectors = {i: np.frombuffer(rows[i].vector, dtype=np.float32) for i in members if i in rows}
        if len(vectors) < 2:
            continue
        head = max(vectors, key=lambda i: (degree.get(i, 0), -i))
        hashes: dict[str | None, int] = {}
        for i in vectors:
            hashes[rows[i].content_hash] = hashes.get(rows[i].content_hash, 0) + 1
        group = DuplicateGroup([DuplicateMember(
            id=i, path=rows[i].path, score=float(np.dot(vectors[head], vectors[i])) if i != head else 1.0,
            exact=rows[i].content_hash is not None and hashes[rows[i].content_hash] > 1, size=rows[i].size)
            for i in vectors])
        group.members.sort(key=lambda m: (m.id != head, -m.score, m.path))
        groups.append(group)
    groups.sort(key=lambda g: (-len(g.members), -min(m.score for m in g.members), g.members[0].path))
    return groups


# -- tags ---------------------------------------------------------------------------------------

@dataclass
class TagSummary:
    labels: list[str]
    classified: int
    skipped: int  # already classified with this label set, bytes unchanged
    counts: dict[str, int]  # pictures per tag, over the whole library, for these labels

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def parse_labels(labels: str | None = None, labels_file: str | os.PathLike | None = None) -> list[str]:
    """Labels from ``--labels`` (comma-separated) and ``--labels-file`` (one a line, read within bounds:
    a regular UTF-8 file of at most 1 MiB and 10,000 lines, else a one-line InputFileError)."""
    out: list[str] = []
    if labels:
        out += [label.strip() for label in labels.split(",")]
    if labels_file:
        out += [label for _, label in read_text_entries(labels_file, "labels file")]
    out = list(dict.fromkeys(label for label in out if label))
    for label in out:
        try:
            check_text(label, "a label")
        except TermError as e:
            raise LibraryError(str(e)) from None
    if len(out) < 2:
        raise LibraryError("zero-shot tagging picks among labels: give at least two (--labels \"beach,dog\" or "
                           "--labels-file FILE, one per line)")
    return out


def labelset_key(labels: Sequence[str], templates: Sequence[str], fingerprint: str) -> str:
    payload = json.dumps([sorted(labels), list(templates), fingerprint])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def label_vectors(encoder: TextEncoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """One unit vector per label: the renormalised mean over the templates (prompt ensembling)."""
    out = np.empty((len(labels), encoder.dim), dtype=np.float32)
    for i, label in enumerate(labels):
        vectors = encoder.encode_texts([t.format(label) for t in templates])
        mean = vectors.mean(axis=0)
        out[i] = mean / np.linalg.norm(mean)
    return out


def tag_pictures(library: Library, encoder: TextEncoder, labels: Sequence[str],
                 templates: Sequence[str] = PAPER_TEMPLATES, min_confidence: float = 0.0,
                 chunk: int = 2048) -> TagSummary:
    """Zero-shot classify the pictures this label set has not seen: each gets its most likely label as a tag
    (when its probability reaches ``min_confidence``). Earlier tags from the same label set are replaced.
    ``encoder``: the text tower of the model that filled the library (its ONNX export, or the model itself)."""
    from indexer import check_same_model

    record = library.model
    if record is None:
        raise LibraryError(f"the library at {library.folder} is empty")
    if hasattr(encoder, "fingerprint"):  # a model, which could be another one; an export is the library's own
        check_same_model(record, encoder.fingerprint, library.folder)
    labels = list(labels)
    key = labelset_key(labels, templates, record.fingerprint)
    text = label_vectors(encoder, labels, templates)
    scale = 100.0 if encoder.logit_scale is None else min(encoder.logit_scale, 100.0)
    reads = library.store.reads
    done = reads.tag_runs(key)
    total = reads.counts()["pictures"]
    classified = 0
    for ids, vectors in reads.iter_vectors(record.embed_dim, chunk=chunk):
        rows = reads.pictures(ids.tolist())
        todo = [k for k, i in enumerate(ids.tolist())
                if i in rows and (i not in done or done[i] != rows[i].content_hash)]
        if not todo:
            continue
        logits = scale * vectors[todo] @ text.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        results = []
        for row, k in enumerate(todo):
            picture_id, label, prob = int(ids[k]), labels[int(best[row])], float(probs[row, best[row]])
            results.append((picture_id, rows[picture_id].content_hash, label if prob >= min_confidence else None,
                            prob))
        library.store.writes.replace_tags(key, results)
        classified += len(todo)
    return TagSummary(labels=labels, classified=classified, skipped=total - classified,
                      counts=library.store.reads.tag_counts(labels))


# -- remove -------------------------------------------------------------------------------------

@dataclass
class RemoveSummary:
    pictures: int
    roots: list[str]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def remove_paths(library: Library, paths: Sequence[str | os.PathLike]) -> RemoveSummary:
    """Forget files, folders or whole roots: their rows, vectors and tags (the files themselves stay).

    A path need not exist any more (a drive gone for good). A root removed is no longer
    recorded; pictures removed from inside a root come back if that root is indexed again.
    """
    targets = [os.path.abspath(os.fspath(p)) for p in paths]
    store = library.store
    with library.writer_lock():
        vectors = library.vector_index(writer=True)
        ids: set[int] = set()
        gone_roots: list[str] = []
        for target in targets:
            found, roots = store.reads.ids_at_or_under(target), store.reads.roots_at_or_under(target)
            if not found and not roots:
                raise LibraryError(f"nothing in the library at or under {target}")
            ids.update(found)
            gone_roots += [root for root in roots if root not in gone_roots]
        store.writes.remove_pictures(ids, gone_roots)
        if ids:
            vectors.remove(np.asarray(sorted(ids), dtype=np.int64))
            vectors.save(library.folder, store)
    return RemoveSummary(pictures=len(ids), roots=gone_roots)


# -- export -------------------------------------------------------------------------------------

def iter_export(library: Library, vectors: bool = False, chunk: int = 5000) -> Iterator[dict]:
    """Every picture of the library (failed ones too, with their error), in id order."""
    reads = library.store.reads
    last = -1
    while rows := reads.export_rows(last, chunk, vectors=vectors):
        last = rows[-1].id
        tags = reads.tags_of(r.id for r in rows)
        for r in rows:
            item = {"id": r.id, "path": r.path, "status": r.status, "size": r.size, "mtime_ns": r.mtime_ns,
                    "content_hash": r.content_hash, "width": r.width, "height": r.height,
                    "taken_at": r.taken_at.isoformat(timespec="seconds") if r.taken_at else None,
                    "error": r.error, "tags": tags.get(r.id, [])}
            if vectors:
                item["vector"] = np.frombuffer(r.vector, dtype=np.float32).tolist() if r.vector else None
            yield item


def export_json(library: Library, vectors: bool = False) -> Iterator[bytes]:
    """The whole export as one JSON object (UTF-8, names kept exactly: ``search.output``), in pieces:
    one picture a line inside its array, so a big library never sits in memory."""
    yield json_bytes(library_header(library))[:-1] + b', "pictures": ['
    for n, item in enumerate(iter_export(library, vectors=vectors)):
        yield (b"," if n else b"") + b"\n" + json_bytes(item)
    yield b"\n]}\n"


def export_jsonl(library: Library, vectors: bool = False) -> Iterator[bytes]:
    """JSON Lines: one picture a line, each exactly an entry of ``export_json``'s "pictures" (no header)."""
    for item in iter_export(library, vectors=vectors):
        yield json_bytes(item) + b"\n"


def library_header(library: Library) -> dict:
    record = library.model
    return {"library": str(library.folder),
            "model": {"architecture": record.architecture, "weights": record.weights,
                      "fingerprint": record.fingerprint, "embed_dim": record.embed_dim} if record else None,
            "roots": library.store.reads.roots()}
