"""The FAISS index: derived from the database, keyed by row id, saved atomically, rebuilt when stale or not
this library's (indexproof.py)."""

from __future__ import annotations

import contextlib
import glob
import warnings
from pathlib import Path

import numpy as np

from encoders.files import atomic_write

from .indexproof import INDEX_PATTERN, belongs, proof_of
from .store import LibraryStore

with warnings.catch_warnings():
    # faiss 1.11-1.13 wheels (built with SWIG 4.3) warn about their own types when imported: nothing to act on.
    warnings.filterwarnings("ignore", "builtin type .* has no __module__ attribute", DeprecationWarning)
    import faiss

# The vectors stay in the file (IO_FLAG_MMAP_IFC: IO_FLAG_MMAP alone still copies a flat index into memory).
READ_ONLY_MAP = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def _gpu_count() -> int:
    # The CPU wheel has no GPU symbols; a GPU wheel on a machine without a device reports 0.
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


@contextlib.contextmanager
def _one_thread_for_one_query(n_queries: int):
    """One query: one OpenMP thread. Exact search over one query is faster on one thread than on two
    (see BENCHMARKS.md, "FAISS alone"). OpenMP keeps the
    thread count per calling thread, so concurrent callers (the app's sessions) do not see each other's."""
    if n_queries != 1:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class VectorIndex:
    """Exact inner-product search over unit vectors (= cosine), ids = database row ids."""

    def __init__(self, index: faiss.Index, generation: int, rebuilt: bool = False):
        self.index = index
        self.generation = generation
        self.rebuilt = rebuilt  # made from the rows, not loaded from a saved file
        self._gpu_index = None

    @classmethod
    def empty(cls, dim: int, generation: int = 0) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), generation)

    @classmethod
    def rebuild(cls, store: LibraryStore, dim: int, generation: int) -> VectorIndex:
        index = cls.empty(dim, generation)
        index.rebuilt = True
        for ids, vectors in store.reads.iter_vectors(dim):
            index.index.add_with_ids(vectors, ids)
        return index

    @classmethod
    def open(cls, folder: Path, store: LibraryStore, save_if_rebuilt: bool, memory_map: bool = False) -> VectorIndex:
        """The index matching the database: the saved file if it is current, else rebuilt from rows.

        ``memory_map``: the saved file is mapped read-only instead of read into memory, for a reader that
        only searches (the query engine): no copy of the vectors, and the page cache is shared between
        processes, and a big file opens in a fraction of the time a read takes (see BENCHMARKS.md, "Figures
        behind choices in the code").

        Only a writer (holding the library lock) may save; readers rebuild in memory. A reader
        racing a writer never fails and never mixes two states: the saved file may vanish
        under it (a newer one replaced it) and rows may change while it rebuilds, so it
        checks that the generation did not move during the rebuild and retries if it did.
        """
        if save_if_rebuilt:
            for junk in glob.glob(str(folder / ".vectors.*.tmp")):  # left by a writer killed while saving
                Path(junk).unlink(missing_ok=True)
        index = None
        for _ in range(5):
            with store.reads.snapshot() as reads:
                record, expected = reads.model(), reads.counts()["pictures"]
            generation = record.generation
            path = folder / INDEX_PATTERN.format(generation=generation)
            if record.index_generation == generation and path.is_file():
                try:
                    loaded = faiss.read_index(str(path), READ_ONLY_MAP if memory_map else 0)
                except RuntimeError:  # replaced and deleted by a writer between the check and the read
                    loaded = None
                proof = record.index_proof()  # none in a library upgraded since: rebuilt, then saved with one
                if loaded is not None:
                    if belongs(loaded, proof, generation, expected, record.embed_dim, store.reads.stored_vectors):
                        return cls(loaded, generation)
                    if proof is not None and store.reads.model().generation == generation:  # not a writer's newer file
                        warnings.warn(f"{path} is not the FAISS index of this library's database (another "
                                      f"library's, or an old copy): not used; rebuilt from the database", stacklevel=2)
            index = cls.rebuild(store, record.embed_dim, generation)
            with store.reads.snapshot() as reads:
                unchanged = reads.model().generation == generation and index.ntotal == reads.counts()["pictures"]
            if unchanged:
                break  # no write happened during the rebuild: the index is exactly this generation
        if save_if_rebuilt:
            index.save(folder, store)
        return index

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))
            self._gpu_index = None

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))
            self._gpu_index = None

    def save(self, folder: Path, store: LibraryStore) -> None:
        """Write to a temp file, rename it to this generation's name, then record it (with its proof) in the
        database."""
        generation = store.reads.model().generation
        self.generation = generation
        target = folder / INDEX_PATTERN.format(generation=generation)
        atomic_write(target, lambda tmp: faiss.write_index(self.index, tmp))
        store.writes.mark_index_saved(proof_of(self.index, generation))
        for old in glob.glob(str(folder / INDEX_PATTERN.format(generation="*"))):
            if Path(old) != target:
                Path(old).unlink(missing_ok=True)

    def _searcher(self) -> faiss.Index:
        if _gpu_count() == 0:
            return self.index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int, within: np.ndarray | None = None,
               gpu: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ``within`` restricts the search to those ids inside FAISS. ``gpu``: on
        the GPU copy of the index when there is a device (a one-shot query does not: copying takes longer)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, self.ntotal if within is None else len(within))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        with _one_thread_for_one_query(len(queries)):
            if within is None:
                return (self._searcher() if gpu else self.index).search(queries, k)
            # Id selectors run on the CPU index; a scoped search touches few vectors anyway.
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(within, dtype=np.int64))
            return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
