"""Combined queries without a model: terms (text or picture, signed weight), parsing, combining, results.

Nothing here imports torch, open_clip or the indexer: a text query must start without them.

Short form (CLI arguments): ``"2:golden retriever" + ./pool.jpg - indoor``. A standalone
``+`` or ``-`` sets the sign of the next term; a leading ``N:`` sets its weight; a term
naming an existing file is a picture; consecutive plain words are one text
(``golden retriever`` unquoted is one term). Long form: ``TEXT --weight 2 --add ./pool.jpg
--subtract indoor`` means exactly the same.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import numpy as np
from PIL import Image


class TermError(ValueError):
    """A query that cannot be parsed (dangling sign, zero weight, ...)."""


@dataclass(frozen=True)
class Term:
    """One part of a combined query: a text, a picture (path or PIL) or a vector, with a signed weight."""

    value: str | os.PathLike | Image.Image | np.ndarray
    weight: float = 1.0
    is_image: bool | None = None  # None: a PIL picture, a Path, or a str naming an existing file is a picture

    def __post_init__(self):
        # Zero is left to the query to refuse: the search page builds a zero-weight part and drops it.
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real) or \
                not math.isfinite(self.weight):
            raise TermError(f"the weight of {_shown_value(self.value)} is {self.weight!r}: a weight is a finite "
                            f"number other than 0")

    def picture(self) -> bool:
        if self.is_image is not None:
            return self.is_image
        if isinstance(self.value, (Image.Image, os.PathLike)):
            return True
        return isinstance(self.value, str) and os.path.isfile(self.value)


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
    def from_row(cls, row, score: float) -> SearchResult:
        """From a ``Picture`` row (or anything with its attributes)."""
        return cls(id=row.id, path=row.path, score=float(score), width=row.width, height=row.height, size=row.size,
                   modified=datetime.fromtimestamp(row.mtime_ns / 1e9), taken_at=row.taken_at)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["modified"] = self.modified.isoformat(timespec="seconds")
        out["taken_at"] = self.taken_at.isoformat(timespec="seconds") if self.taken_at else None
        return out


SORT_KEYS = {
    "score": lambda r: -r.score,
    "date": lambda r: r.taken_at or r.modified,
    "path": lambda r: r.path,
}

_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*:(.*)$", re.DOTALL)


def split_weight(token: str) -> tuple[float | None, str]:
    """``"2:golden retriever"`` → ``(2.0, "golden retriever")``; no prefix → ``(None, token)``.

    A token naming an existing file is never split (a file may be called ``2:x.jpg``).
    """
    if os.path.isfile(token):
        return None, token
    match = _WEIGHT.match(token)
    if not match or not match.group(2).strip():
        return None, token
    return float(match.group(1)), match.group(2).strip()


def _term(token: str, sign: float, weight: float | None = None) -> Term:
    prefixed, value = split_weight(token)
    if prefixed is not None and weight is not None:
        raise TermError(f"{token!r} has a weight prefix and --weight as well: give the weight once")
    w = sign * (prefixed if prefixed is not None else weight if weight is not None else 1.0)
    if not math.isfinite(w):
        given = "--weight" if prefixed is None else "its N: prefix"
        raise TermError(f"{_shown_value(token)} has weight {w} ({given}): a weight is a finite number other than 0")
    if w == 0:
        raise TermError(f"{_shown_value(token)} has weight 0: leave it out instead")
    picture = os.path.isfile(value)
    if not picture:
        check_text(value, "a query part that is not a picture file")
    return Term(value, w, is_image=picture)


def check_text(text: str, what: str = "a query text") -> str:
    """A query or label text as the text model can take it: valid Unicode (not bytes of another encoding)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TermError(f"{what} must be UTF-8 text: {_shown_value(text)} holds bytes of another encoding") from None
    return text


def check_score(value: float | None, name: str = "min_score") -> float | None:
    """A cosine similarity threshold: a number from -1 to 1 (NaN, infinities and booleans refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not -1.0 <= value <= 1.0:
        raise TermError(f"{name} {value!r} is not a cosine similarity: give a number from -1 to 1")
    return float(value)


def _shown_value(value) -> str:
    """A term as messages name it: quoted text or path, escaped by repr (control characters, bad bytes), cut
    at 80 characters."""
    if not isinstance(value, (str, os.PathLike)):
        return type(value).__name__
    text = repr(os.fspath(value))
    return text if len(text) <= 80 else text[:77] + "..."


def parse_terms(tokens: Sequence[str] = (), *, add: Iterable[str] = (), subtract: Iterable[str] = (),
                images: Iterable[str | os.PathLike] = (), weight: float | None = None) -> list[Term]:
    """Terms from the CLI's short form (``tokens``) and long form (``--add``, ``--subtract``, ``--image``).

    ``weight`` (``--weight``) is the weight of the first term of ``tokens``, the main query.
    """
    terms: list[Term] = []
    sign: float | None = None
    words: list[str] = []

    def flush() -> None:
        nonlocal sign
        if words:
            terms.append(_term(" ".join(words), sign or 1.0, weight if not terms else None))
            words.clear()
            sign = None

    for token in tokens:
        if token in ("+", "-"):
            flush()
            if sign is not None:
                raise TermError(f"two signs in a row before {token!r}: write `+ TERM` or `- TERM`")
            sign = 1.0 if token == "+" else -1.0
        elif os.path.isfile(token):
            flush()
            terms.append(_term(token, sign or 1.0, weight if not terms else None))
            sign = None
        elif token.strip():
            words.append(token.strip())
    flush()
    if sign is not None:
        raise TermError("the query ends with a sign: write `+ TERM` or `- TERM`")
    if weight is not None and not terms:
        raise TermError("--weight is the weight of the query TEXT: give a TEXT too")
    terms += [Term(os.fspath(p), 1.0, is_image=True) for p in images]
    terms += [_term(t, 1.0) for t in add if t.strip()]
    terms += [_term(t, -1.0) for t in subtract if t.strip()]
    return terms


def combine(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit vectors, renormalised: query arithmetic in the embedding space.

    Only the weights' ratios count, so they are scaled to a largest of 1 first: a tiny weight alone is
    still a direction. Parts cancel out when what is left is tiny next to what was added up.
    """
    scale = max((abs(float(w)) for w in weights), default=0.0)
    if scale == 0:
        raise TermError("every part of the query has weight 0: nothing is left to search for")
    parts = [(float(w) / scale) * np.asarray(v, dtype=np.float64) for w, v in zip(weights, vectors, strict=True)]
    vector = np.sum(parts, axis=0)
    norm = float(np.linalg.norm(vector))
    if norm <= 1e-5 * sum(float(np.linalg.norm(p)) for p in parts):
        raise TermError("the query's parts cancel out: nothing is left to search for")
    return (vector / norm).astype(np.float32)


def ensemble_mean(vectors: np.ndarray) -> np.ndarray:
    """Prompt ensembling: the mean of unit text vectors (one per template), renormalised."""
    mean = np.asarray(vectors, dtype=np.float32).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def own_picture_first(results: list[SearchResult], terms: Sequence[Term]) -> list[SearchResult]:
    """Among equal scores (exact duplicates), the queried file itself ranks first."""
    pictures = [t for t in terms if t.picture()]
    if len(pictures) != 1 or not isinstance(pictures[0].value, (str, os.PathLike)) or not results:
        return results
    own = os.path.abspath(pictures[0].value)
    for i, r in enumerate(results):
        if r.path == own and r.score >= results[0].score - 1e-5:
            return [r, *results[:i], *results[i + 1:]]
    return results


def finish(results: list[SearchResult], min_score: float | None, sort: str) -> list[SearchResult]:
    if min_score is not None:
        results = [r for r in results if r.score >= min_score]
    return sorted(results, key=SORT_KEYS[sort]) if sort != "score" else results
