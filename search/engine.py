"""The query engine: a library plus its model → ranked pictures for a text, a picture, or both.

The one query path: the `search query` command, the Python API and the search page all answer here. Each
query loads only what it needs, when it first needs it:

- texts run through the library's text tower exported to ONNX (``encoders.text``) when there is one, else
  through the PyTorch model, which then exports it (once per library and model) for every later query;
- a picture the library holds unchanged is searched with its stored vector; any other picture needs the
  PyTorch image tower;
- the FAISS file is memory-mapped when it is proven to be this library's rows (else rebuilt from them).

So importing this module imports neither torch nor open_clip, and a text query never does once the tower
is exported (tests/test_query_tools.py checks it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING

import numpy as np

from encoders import PAPER_TEMPLATES
from indexer import Library, LibraryError, VectorIndex, check_same_model

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
from .text_tower import PREPACK_FROM_TEXTS, TextTowers

if TYPE_CHECKING:
    from PIL import Image

    from encoders import ClipEncoder, ModelSpec, TextEncoder

__all__ = ["QueryError", "SearchEngine", "SearchResult", "Term", "Filters", "SORT_KEYS", "DateLike"]

DateLike = str | date | datetime | None


class QueryError(LibraryError):
    """A query that cannot be answered as asked (no terms, unreadable picture, ...)."""


class SearchEngine:
    """Open a library once, answer many queries; picks up re-indexing done meanwhile by another process.

    ``spec`` names a model to check against the library's (loaded at once); ``encoder`` is a loaded one
    (checked likewise). ``text_encoder`` fixes the text tower (``ClipEncoder`` or ``OnnxTextEncoder``);
    by default it is the exported ONNX one when there is one, else the PyTorch model. After a query that
    loaded the PyTorch model, the text tower is exported beside the library and used from then on.

    ``one_shot``: this engine answers one query and ends (`search query`). Then the search stays on the
    CPU (copying the index to a GPU takes longer than the search), the ONNX tower loads without laying
    out its weights for many texts (``OnnxTextEncoder``'s prepack) unless the query has many, and the
    export waits for the caller to call ``prepare_text_tower`` once it has shown the results.
    """

    def __init__(self, library: str | os.PathLike | None = None, spec: ModelSpec | None = None,
                 encoder: ClipEncoder | None = None, *, text_encoder: TextEncoder | None = None,
                 one_shot: bool = False, database: str | None = None):
        self.library = Library.open(resolve_library_dir(library), database=database)
        record = self.library.model
        if record is None:
            raise LibraryError(f"the library at {self.library.folder} is empty: "
                               f"run `search index PATH --library {self.library.folder}`")
        self.record = record
        self._spec = spec
        self._encoder = encoder
        if encoder is not None:
            check_same_model(record, encoder.fingerprint, self.library.folder)
        elif spec is not None:
            _ = self.encoder  # a model named by the caller must be the library's before anything is answered
        self._one_shot = one_shot
        self.text_towers = TextTowers(self.library.folder, record.fingerprint, not self.library.read_only,
                                      lambda: self.encoder, fixed=text_encoder, one_shot=one_shot)
        self._vectors: VectorIndex | None = None
        self._image_encoder = None

    @property
    def encoder(self) -> ClipEncoder:
        """The PyTorch model (both towers), loaded on first use and checked to be the library's."""
        if self._encoder is None:
            from encoders import load_encoder

            encoder = load_encoder(self._spec or self.library.model_spec())
            check_same_model(self.record, encoder.fingerprint, self.library.folder)
            self._encoder = encoder
        return self._encoder

    @property
    def image_encoder(self):
        """The image tower for pictures from outside the library: the one that filled it when that is its ONNX
        export (no torch, the same vectors as the library's), else the PyTorch model's."""
        if self._image_encoder is None:
            from encoders.onnx.image import ONNX, OnnxImageEncoder

            exported = None
            if self._encoder is None and self.record.inference == ONNX:
                exported = OnnxImageEncoder.for_library(self.library.folder, self.library.model_fingerprint(),
                                                        1 if self._one_shot else None)
            self._image_encoder = exported or self.encoder
        return self._image_encoder

    @property
    def torch_loaded(self) -> bool:
        """Whether this engine has loaded the PyTorch model (a query needed it, or the caller gave it)."""
        return self._encoder is not None

    @property
    def text_encoder(self) -> TextEncoder:
        """The text tower exported to ONNX beside the library when there is one, else the PyTorch model."""
        return self.text_towers.for_texts(PREPACK_FROM_TEXTS)

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index (memory-mapped: searched, never changed here), reloaded when the database moved on."""
        generation = self.library.store.reads.model().generation
        if self._vectors is None or self._vectors.generation != generation:
            self._vectors = self.library.vector_index(writer=False, memory_map=True)
        return self._vectors

    def text_vector(self, text: str, templates: Sequence[str] | None = None) -> np.ndarray:
        """A text's unit vector; with ``templates`` ("a photo of a {}.", ...), the renormalised mean over them."""
        return self.text_vectors([text], templates)[0]

    def text_vectors(self, texts: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """Unit vectors of several texts in one pass through the text tower (see ``text_vector``)."""
        if not templates:
            return self.text_towers.for_texts(len(texts)).encode_texts(list(texts))
        filled = self.text_towers.for_texts(len(texts) * len(templates)).encode_texts(
            [t.format(text) for text in texts for t in templates])
        n = len(templates)
        return np.stack([ensemble_mean(filled[i * n:(i + 1) * n]) for i in range(len(texts))])

    def image_vector(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """A picture's unit vector: a file the library holds unchanged gives its stored vector (no model);
        any other file, or a decoded picture (the page's uploads), goes through the image tower
        (``image_encoder``)."""
        if not isinstance(image, (str, os.PathLike)):
            from encoders.images import prepare_image

            return self._embed(prepare_image(image))
        path = os.path.abspath(image)
        stored = self._stored_vector(path)
        if stored is not None:
            return stored
        from encoders.decode import DecodeError, decode_picture, read_file

        try:  # the decoder's read: a regular file (never a FIFO that blocks), within its byte cap
            data = read_file(path)
        except OSError as e:
            raise QueryError(f"cannot read picture {image}: {e.strerror or e}") from e
        except DecodeError as e:
            raise QueryError(f"cannot use {image} as a query: {e}") from e
        try:
            picture = decode_picture(data, min(self.image_encoder.image_size))
        except DecodeError as e:
            raise QueryError(f"cannot use {image} as a query: {e}") from e
        return self._embed(picture.image)

    def _embed(self, image: Image.Image) -> np.ndarray:
        """A decoded, upright RGB picture through the image tower, prepared as the indexer prepares them."""
        encoder = self.image_encoder
        return encoder.encode_images(encoder.split.array([encoder.split.pil(image)]))[0]

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

    def term_vectors(self, terms: Sequence[Term], templates: Sequence[str] | None = None) -> list[np.ndarray]:
        """Each term's unit vector; the texts among them go through the text tower together."""
        vectors: list[np.ndarray | None] = []
        for term in terms:
            if isinstance(term.value, np.ndarray):
                vectors.append(np.asarray(term.value, dtype=np.float32))
            else:
                vectors.append(self.image_vector(term.value) if term.picture() else None)
        texts = [i for i, vector in enumerate(vectors) if vector is None]
        if texts:
            for i, vector in zip(texts, self.text_vectors([str(terms[i].value) for i in texts], templates),
                                 strict=True):
                vectors[i] = vector
        return vectors

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
            vector = combine(self.term_vectors(terms, templates), [t.weight for t in terms])
        except TermError as e:
            raise QueryError(str(e)) from None
        pictures = [t for t in terms if t.picture()]
        # Exact duplicates tie with the queried file; fetch them all so it can be put first.
        extra = self._copies_of(pictures[0].value) if len(pictures) == 1 else 0
        results = self.search_vector(vector, top_k=top_k + extra, filters=filters)
        results = own_picture_first(results, terms)[:top_k]
        if not self._one_shot and self.torch_loaded:
            self.prepare_text_tower()  # the PyTorch model is loaded now: later text queries need not load it
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
        """Row ids a filtered search may return (None: no filter, everything); an unknown tag is a QueryError."""
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
        scores, ids = self.vectors.search(np.asarray(vector, dtype=np.float32)[None], top_k, within=within,
                                          gpu=not self._one_shot)
        rows = self.library.store.reads.pictures(int(i) for i in ids[0] if i >= 0)
        # A row deleted by a concurrent index run since the search is simply left out.
        return [SearchResult.from_row(rows[int(i)], s) for s, i in zip(scores[0], ids[0], strict=True)
                if int(i) in rows]

    def prepare_text_tower(self) -> bool:
        """Whether texts now run in ONNX Runtime: exports the text tower beside the library first if it is not
        there (once per engine, with the PyTorch model, loaded if need be). False for a read-only library, no
        `onnx`/`onnxruntime` here, or a model whose tower does not export (``text_towers.refusal`` then says
        why, this once: the refusal is recorded so that no later query tries again)."""
        return self.text_towers.prepare()

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
            "inference": record.inference,  # the image tower's path that fills it (encoders/inference.py)
            "roots": roots,
            "last_indexed": record.last_indexed_at.isoformat(timespec="seconds") if record.last_indexed_at else None,
            # Folders the last run over their root could not read; the rows under them were kept as they were.
            "unreadable_folders": unreadable,
            "pictures_kept": sum(folder["pictures_kept"] for folder in unreadable),
        }
