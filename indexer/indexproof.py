"""Proof that a FAISS file belongs to its library: what it was built from, recorded in the database beside it.

Count and dimension alone cannot tell this library's file from another library's of the same size
(a restored backup, a folder copied over another). So saving records, in the library's row, the
generation of the rows it was built from, its count and dimension, and a digest of its ids in the
order the file holds them; loading checks all of them, and compares a few of the file's vectors,
spread over it, with the database's. Anything that fails is rebuilt from the database, never used.
Costs well under a millisecond at 100k vectors (no sort, no pass over the vectors); needs numpy and
xxhash only, so `search query` checks it without SQLAlchemy or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

INDEX_PATTERN = "vectors.{generation}.faiss"  # the saved FAISS file of the rows at one generation
SAMPLES = 8  # vectors compared with the database's


@dataclass(frozen=True)
class IndexProof:
    generation: int
    count: int
    dim: int
    ids_digest: str


def index_ids(index) -> np.ndarray:
    """The ids of an ``IndexIDMap2`` in the order it holds them."""
    import faiss

    return faiss.vector_to_array(index.id_map)


def proof_of(index, generation: int) -> IndexProof:
    return IndexProof(generation, int(index.ntotal), int(index.d), xxhash.xxh3_128_hexdigest(index_ids(index)))


def belongs(index, proof: IndexProof | None, generation: int, count: int, dim: int,
            stored_vectors: Callable[[Sequence[int]], dict[int, bytes]]) -> bool:
    """Whether a loaded FAISS index is the one recorded for this library at ``generation`` with ``count``
    embedded rows of ``dim``: ``stored_vectors(ids)`` gives the database's vector bytes of those rows."""
    if proof is None or (proof.generation, proof.count, proof.dim) != (generation, count, dim):
        return False
    if (index.ntotal, index.d) != (count, dim):
        return False
    ids = index_ids(index)
    if xxhash.xxh3_128_hexdigest(ids) != proof.ids_digest:
        return False
    if count == 0:
        return True
    sample = sorted({int(ids[p]) for p in np.linspace(0, count - 1, min(SAMPLES, count)).astype(np.int64)})
    stored = stored_vectors(sample)
    for picture_id in sample:
        vector = stored.get(picture_id)
        if vector is None or not np.array_equal(index.reconstruct(picture_id), np.frombuffer(vector, np.float32)):
            return False
    return True
