"""The query engine: a library plus its model → ranked pictures for a text, a picture, or both."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

import numpy as np
from PIL import Image

from encoders import PAPER_TEMPLATES, ClipEncoder, ModelSpec, load_encoder
from encoders.decode import read_file
from indexer import DecodeError, Library, LibraryError, VectorIndex, check_same_model, decode_picture

from .filters import FilterError, Filters, unknown_tags_message
from .library import resolve_library_dir
from .terms import (
    SORT_KEYS,
    SearchResult,
    Term,
    TermError,
    check_score,
    check_text,
    combine,
    ensemble_mean,
    finish,
    own_picture_first,
)

__all__ = ["QueryError", "SearchEngine", "SearchResult", "Term", "Filters", "SORT_KEYS", "DateLike"]

DateLike = str | date | datetime | None


class QueryError(LibraryError):
    """A query that cannot be answered as asked (no terms, unreadable picture, ...)."""


class SearchEngine:
    """Open a library once, answer many queries; picks up re-indexing done meanwhile by another process.

    The model loads on the first query that needs it: a picture already in the library is
    searched with its stored vector, without the model.
    """

    def __init__(self, library: str | os.PathLike | None = None, spec: ModelSpec | None = None,
                 encoder: ClipEncoder | None = None, database: str | None = None):
        self.library = Library.open(resolve_library_dir(library), database=database)
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
        self.fast_query_refusal: str | None = None  # why this model's text tower stays on PyTorch, once decided

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
        generation = self.library.store.reads.model().generation
        if self._vectors is None or self._vectors.generation != generation:
            self._vectors = self.library.vector_index(writer=False)
        return self._vectors

    def text_vector(self, text: str, templates: Sequence[str] | None = None) -> np.ndarray:
        """A text's unit vector; with ``templates`` ("a photo of a {}.", ...), the renormalised mean over them."""
        if templates:
            return ensemble_mean(self.encoder.encode_texts([t.format(text) for t in templates]))
        return self.encoder.encode_texts([text])[0]

    def image_vector(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        if isinstance(image, Image.Image):
            return self.encoder.encode_images([image])[0]
        path = os.path.abspath(image)
        stored = self._stored_vector(path)
        if stored is not None:
            return stored
        try:  # the decoder's read: a regular file (never a FIFO that blocks), within its byte cap
            data = read_file(path)
        except OSError as e:
            raise QueryError(f"cannot read picture {image}: {e.strerror or e}") from e
        except DecodeError as e:
            raise QueryError(f"cannot use {image} as a query: {e}") from e
        try:
            picture = decode_picture(data, min(self.encoder.image_size))
        except DecodeError as e:
            raise QueryError(f"cannot use {image} as a query: {e}") from e
        return self.encoder.encode_images(self.encoder.preprocess(picture.image)[None])[0]

    def _stored_vector(self, path: str) -> np.ndarray | None:
        """The library's own vector for a file it holds unchanged: exact, and no model needed."""
        row = self.library.store.reads.picture_by_path(path)
        if row is None or row.vector is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (row.size, row.mtime_ns):
            return None
        return np.frombuffer(row.vector, dtype=np.float32)

    def term_vector(self, term: Term, templates: Sequence[str] | None = None) -> np.ndarray:
        if isinstance(term.value, np.ndarray):
            return np.asarray(term.value, dtype=np.float32)
        if term.picture():
            return self.image_vector(term.value)
        return self.text_vector(str(term.value), templates)

    def query(self, text: str | None = None, image: str | os.PathLike | Image.Image | None = None,
              top_k: int = 10, under: str | os.PathLike | None = None, *, terms: Sequence[Term] = (),
              min_score: float | None = None, sort: str = "score", after: DateLike = None, before: DateLike = None,
              ext: str | Sequence[str] | None = None, tags: str | Sequence[str] | None = None,
              filters: Filters | None = None, ensemble: bool = False,
              templates: Sequence[str] | None = None) -> list[SearchResult]:
        """Ranked pictures for a text, a picture, or any weighted mix of them.

        Each part is a unit vector; the weighted sum is renormalised (query arithmetic in
        the embedding space, negative weights subtract). ``ensemble`` embeds each text through
        prompt ``templates`` (default: the paper's 80) and averages. Filters (``under``,
        ``after``/``before`` on the date taken else file time, ``ext``, ``tags``, or a ready
        ``filters``) restrict the search inside FAISS, so ``top_k`` results come back whenever
        that many pictures match. ``min_score`` drops weaker results; ``sort`` reorders the top
        results by "score", "date" (taken, else modified) or "path".
        """
        terms = self.query_terms(text, image, terms)
        try:
            min_score = check_score(min_score)
        except TermError as e:
            raise QueryError(str(e)) from None
        if sort not in SORT_KEYS:
            raise QueryError(f"unknown sort {sort!r}: use one of {', '.join(SORT_KEYS)}")
        filters = self.make_filters(under, after, before, ext, tags, filters)
        templates = (tuple(templates) if templates else PAPER_TEMPLATES) if ensemble else None
        try:
            vector = combine([self.term_vector(t, templates) for t in terms], [t.weight for t in terms])
        except TermError as e:
            raise QueryError(str(e)) from None
        pictures = [t for t in terms if t.picture()]
        # Exact duplicates tie with the queried file; fetch them all so it can be put first.
        extra = self._copies_of(pictures[0].value) if len(pictures) == 1 else 0
        results = self.search_vector(vector, top_k=top_k + extra, filters=filters)
        results = own_picture_first(results, terms)[:top_k]
        return finish(results, min_score, sort)

    @staticmethod
    def query_terms(text=None, image=None, terms: Sequence[Term] = ()) -> list[Term]:
        terms = list(terms)
        if text is not None and text.strip():
            terms.insert(0, Term(text, is_image=False))
        if image is not None:
            terms.append(Term(image, is_image=True))
        terms = [t for t in terms if not (isinstance(t.value, str) and not t.value.strip())]
        if not terms:
            raise QueryError("nothing to search for: give a text, a picture, or both")
        for term in terms:
            if term.weight == 0:
                raise QueryError(f"a part of the query has weight 0 ({term.value!r:.80}): leave it out instead")
            if isinstance(term.value, str) and not term.picture():
                try:
                    check_text(term.value)
                except TermError as e:
                    raise QueryError(str(e)) from None
        return terms

    @staticmethod
    def make_filters(under=None, after=None, before=None, ext=None, tags=None,
                     filters: Filters | None = None) -> Filters:
        try:
            made = Filters.make(under, after, before, ext, tags)
        except FilterError as e:
            raise QueryError(str(e)) from None
        if filters is None:
            return made
        if made:
            raise QueryError("give filters either as a Filters object or as keyword arguments, not both")
        return filters

    def _copies_of(self, picture) -> int:
        """How many other library rows hold exactly the bytes of this picture file."""
        if not isinstance(picture, (str, os.PathLike)):
            return 0
        reads = self.library.store.reads
        row = reads.picture_by_path(os.path.abspath(picture))
        if row is None or row.content_hash is None:
            return 0
        return reads.count_with_hash(row.content_hash) - 1

    def matching_ids(self, filters: Filters) -> np.ndarray | None:
        """Row ids a filtered search may return (None: no filter, everything)."""
        if not filters:
            return None
        reads = self.library.store.reads
        if filters.tags:
            message = unknown_tags_message(filters.tags, reads.known_tags())
            if message:
                raise QueryError(message)
        return reads.matching_ids(filters)

    def search_vector(self, vector: np.ndarray, top_k: int = 10, under: str | os.PathLike | None = None, *,
                      filters: Filters | None = None) -> list[SearchResult]:
        """Nearest pictures to a unit vector, among those the filters allow (searched inside FAISS)."""
        filters = self.make_filters(under, filters=filters)
        within = self.matching_ids(filters)
        scores, ids = self.vectors.search(np.asarray(vector, dtype=np.float32)[None], top_k, within=within)
        rows = self.library.store.reads.pictures(int(i) for i in ids[0] if i >= 0)
        # A row deleted by a concurrent index run since the search is simply left out.
        return [SearchResult.from_row(rows[int(i)], s) for s, i in zip(scores[0], ids[0], strict=True)
                if int(i) in rows]

    def prepare_fast_queries(self) -> Path | None:
        """Export the text tower to ONNX beside the library (once), so the CLI can answer without torch.

        Returns the ONNX file, or None when this model or machine cannot use that path.
        """
        from .textonnx import (
            ExportRefused,
            export_state,
            export_text_tower,
            onnx_available,
            record_refusal,
            sidecar_paths,
        )

        folder, fingerprint = self.library.folder, self.record.fingerprint
        if self.library.read_only or not onnx_available(export=True):
            return None
        state = export_state(folder, fingerprint)
        if state != "missing":
            return sidecar_paths(folder, fingerprint)[0] if state == "ready" else None
        try:
            return export_text_tower(self.encoder, folder)
        except ExportRefused as e:
            record_refusal(folder, fingerprint, str(e))
            self.fast_query_refusal = str(e)
        except (OSError, ImportError):  # a full disk, or no `onnx` to export with: stay on PyTorch
            pass
        return None

    def status(self) -> dict:
        record = self.record
        reads = self.library.store.reads
        with reads.snapshot() as r:
            counts, unreadable, roots = r.counts(), r.unreadable_folders(), r.roots()
        return {
            "library": str(self.library.folder),
            "schema": self.library.store.schema,
            "read_only": self.library.read_only,
            **counts,
            "model": {"architecture": record.architecture, "weights": record.weights,
                      "fingerprint": record.fingerprint, "embed_dim": record.embed_dim},
            "roots": roots,
            "last_indexed": record.last_indexed_at.isoformat(timespec="seconds") if record.last_indexed_at else None,
            # Folders the last run over their root could not read; the rows under them were kept as they were.
            "unreadable_folders": unreadable,
            "pictures_kept": sum(folder["pictures_kept"] for folder in unreadable),
        }
