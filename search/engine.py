"""The query engine: a library plus its model → ranked pictures for a text, a picture, or both."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

from encoders import ClipEncoder, ModelSpec, load_encoder
from indexer import DecodeError, Library, LibraryError, Picture, VectorIndex, check_same_model, decode_picture

from .library import resolve_library_dir


class QueryError(LibraryError):
    """A query that cannot be answered as asked (no terms, unreadable picture, ...)."""


@dataclass(frozen=True)
class SearchResult:
    id: int
    path: str
    score: float
    width: int | None
    height: int | None
    size: int
    modified: datetime
    taken_at: datetime | None

    @classmethod
    def from_row(cls, row: Picture, score: float) -> SearchResult:
        return cls(id=row.id, path=row.path, score=float(score), width=row.width, height=row.height, size=row.size,
                   modified=datetime.fromtimestamp(row.mtime_ns / 1e9), taken_at=row.taken_at)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["modified"] = self.modified.isoformat(timespec="seconds")
        out["taken_at"] = self.taken_at.isoformat(timespec="seconds") if self.taken_at else None
        return out


@dataclass(frozen=True)
class Term:
    """One part of a combined query: a text, a picture (path or PIL) or a vector, with a signed weight."""

    value: str | os.PathLike | Image.Image | np.ndarray
    weight: float = 1.0
    is_image: bool | None = None  # None: a PIL picture, a Path, or a str naming an existing file is a picture

    def picture(self) -> bool:
        if self.is_image is not None:
            return self.is_image
        if isinstance(self.value, (Image.Image, os.PathLike)):
            return True
        return isinstance(self.value, str) and os.path.isfile(self.value)


SORT_KEYS = {
    "score": lambda r: -r.score,
    "date": lambda r: r.taken_at or r.modified,
    "path": lambda r: r.path,
}


class SearchEngine:
    """Open a library once, answer many queries; picks up re-indexing done meanwhile by another process.

    The model loads on the first query that needs it: a picture already in the library is
    searched with its stored vector, without the model.
    """

    def __init__(self, library: str | os.PathLike | None = None, spec: ModelSpec | None = None,
                 encoder: ClipEncoder | None = None):
        self.library = Library.open(resolve_library_dir(library))
        record = self.library.model
        if record is None:
            raise LibraryError(f"the library at {self.library.folder} is empty: "
                               f"run `search index PATH --library {self.library.folder}`")
        self.record = record
        self._spec = spec or self.library.model_spec()
        self._encoder = encoder
        if encoder is not None:
            check_same_model(record, encoder.fingerprint, self.library.folder)
        self._vectors: VectorIndex | None = None

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            encoder = load_encoder(self._spec)
            check_same_model(self.record, encoder.fingerprint, self.library.folder)
            self._encoder = encoder
        return self._encoder

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, reloaded when the database moved on since it was read."""
        generation = self.library.store.model().generation
        if self._vectors is None or self._vectors.generation != generation:
            self._vectors = self.library.vector_index(writer=False)
        return self._vectors

    def text_vector(self, text: str) -> np.ndarray:
        return self.encoder.encode_texts([text])[0]

    def image_vector(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.encoder.encode_images([image])[0]
        path = os.path.abspath(image)
        stored = self._stored_vector(path)
        if stored is not None:
            return stored
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise QueryError(f"cannot read picture {image}: {e.strerror or e}") from e
        try:
            picture = decode_picture(data, min(self.encoder.image_size))
        except DecodeError as e:
            raise QueryError(f"cannot use {image} as a query: {e}") from e
        return self.encoder.encode_images(self.encoder.preprocess(picture.image)[None])[0]

    def _stored_vector(self, path: str) -> np.ndarray | None:
        """The library's own vector for a file it holds unchanged: exact, and no model needed."""
        row = self.library.store.picture_by_path(path)
        if row is None or row.vector is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            return None
        return np.frombuffer(row.vector, dtype=np.float32)

    def term_vector(self, term: Term) -> np.ndarray:
        if isinstance(term.value, np.ndarray):
            return np.asarray(term.value, dtype=np.float32)
        if term.picture():
            return self.image_vector(term.value)
        return self.text_vector(str(term.value))

    def query(self, text: str | None = None, image: str | os.PathLike | Image.Image | None = None,
              top_k: int = 10, under: str | os.PathLike | None = None, *, terms: Sequence[Term] = (),
              min_score: float | None = None, sort: str = "score") -> list[SearchResult]:
        """Ranked pictures for a text, a picture, or any weighted mix of them.

        Each part is a unit vector; the weighted sum is renormalised (query arithmetic in
        the embedding space, negative weights subtract). ``sort`` reorders the top results
        by "score", "date" (taken, else modified) or "path".
        """
        terms = list(terms)
        if text is not None and text.strip():
            terms.insert(0, Term(text, is_image=False))
        if image is not None:
            terms.append(Term(image, is_image=True))
        terms = [t for t in terms if not (isinstance(t.value, str) and not t.value.strip())]
        if not terms:
            raise QueryError("nothing to search for: give a text, a picture, or both")
        if sort not in SORT_KEYS:
            raise QueryError(f"unknown sort {sort!r}: use one of {', '.join(SORT_KEYS)}")
        vector = np.sum([t.weight * self.term_vector(t) for t in terms], axis=0)
        norm = float(np.linalg.norm(vector))
        if norm < 1e-6:
            raise QueryError("the query's parts cancel out: nothing is left to search for")
        pictures = [t for t in terms if t.picture()]
        # Exact duplicates tie with the queried file; fetch them all so it can be put first.
        extra = self._copies_of(pictures[0].value) if len(pictures) == 1 else 0
        results = self.search_vector(vector / norm, top_k=top_k + extra, under=under)
        results = self._own_picture_first(results, pictures)[:top_k]
        if min_score is not None:
            results = [r for r in results if r.score >= min_score]
        return sorted(results, key=SORT_KEYS[sort]) if sort != "score" else results

    def _copies_of(self, picture) -> int:
        """How many other library rows hold exactly the bytes of this picture file."""
        if not isinstance(picture, (str, os.PathLike)):
            return 0
        row = self.library.store.picture_by_path(os.path.abspath(picture))
        if row is None or row.content_hash is None:
            return 0
        return self.library.store.count_with_hash(row.content_hash) - 1

    def _own_picture_first(self, results: list[SearchResult], pictures: list[Term]) -> list[SearchResult]:
        """Among equal scores (exact duplicates), the queried file itself ranks first."""
        if len(pictures) != 1 or not isinstance(pictures[0].value, (str, os.PathLike)) or not results:
            return results
        own = os.path.abspath(pictures[0].value)
        for i, r in enumerate(results):
            if r.path == own and r.score >= results[0].score - 1e-5:
                return [r, *results[:i], *results[i + 1:]]
        return results

    def search_vector(self, vector: np.ndarray, top_k: int = 10,
                      under: str | os.PathLike | None = None) -> list[SearchResult]:
        within = self.library.store.ids_under(os.path.abspath(under)) if under is not None else None
        scores, ids = self.vectors.search(vector[None], top_k, within=within)
        rows = self.library.store.pictures(int(i) for i in ids[0] if i >= 0)
        # A row deleted by a concurrent index run since the search is simply left out.
        return [SearchResult.from_row(rows[int(i)], s) for s, i in zip(scores[0], ids[0]) if int(i) in rows]

    def status(self) -> dict:
        record = self.record
        counts = self.library.store.counts()
        return {
            "library": str(self.library.folder),
            **counts,
            "model": {"architecture": record.architecture, "weights": record.weights,
                      "fingerprint": record.fingerprint, "embed_dim": record.embed_dim},
            "roots": [root.path for root in self.library.store.roots()],
            "last_indexed": record.last_indexed_at.isoformat(timespec="seconds") if record.last_indexed_at else None,
        }
