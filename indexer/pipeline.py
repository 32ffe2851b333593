"""scan → decode → encode → store → index: one incremental run over a library's roots."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.decode import MAX_PIXELS

from .library import Library, LibraryError, storage_error
from .prepare import Prepared, prepare_file
from .scan import ScannedFile, ScanOptions, UnreadableFolder, scan
from .store import FAILED, OK, PictureState, utcnow
from .workers import DEFAULT_TIMEOUT, TIMED_OUT, DecodePool

if TYPE_CHECKING:  # a run that finds nothing to embed imports neither torch nor the model
    import torch

    from encoders import ClipEncoder
    from encoders.onnx.image import OnnxImageEncoder

    # The encoder, or what loads it: called only when the run has pictures to embed (or a new library to fill).
    ImageEncoder = ClipEncoder | OnnxImageEncoder
    EncoderSource = ImageEncoder | Callable[[int], ImageEncoder]


class MissingRoot(LibraryError):
    pass


def default_batch_size(device: torch.device) -> int:
    """Pictures per encoder call: large on a GPU (the pipeline backs off on out-of-memory), 32 on a CPU,
    where bigger batches buy nothing and only delay the first commit."""
    return 128 if device.type == "cuda" else 32


def decode_niceness(device: torch.device) -> int:
    """How much lower than the encoder the decode workers run. On a CPU they share the cores with the
    encoder's threads: when a decoder preempts one of them, the other waits at the next barrier and the
    batch stalls. At the lowest priority decoders take the cores while the encoder waits and between its
    threads' work instead, and the run is faster (see BENCHMARKS.md, "Indexing", runs 8 and 9–12). With a GPU
    the encoder waits on the device and the decoders are the bottleneck."""
    return 0 if device.type == "cuda" else 19


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device: torch.device | None = None) -> int:
    """Decode processes: on a CPU the encoder needs the cores most of the time and decoding fills the
    gaps (one worker per core keeps it ahead); a GPU leaves every core to decoding."""
    cores = available_cores()
    if device is not None and device.type == "cuda":
        return max(1, min(16, cores - 1))
    return max(1, min(8, cores))


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int | None = None
    workers: int | None = None  # decode processes; 0 = decode in threads of this process (no isolation)
    scan: ScanOptions = ScanOptions()
    max_pixels: int = MAX_PIXELS
    decode_timeout: float = DEFAULT_TIMEOUT  # seconds for one file before its decoder is killed
    lock_wait: float = 0.0  # seconds to wait for another writer to finish before refusing (LibraryBusy)


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    duplicates: int = 0  # exact copies of a picture already embedded: vector copied, not encoded
    retried: int = 0  # unchanged files tried again because their last failure may have been transient
    embedded: int = 0  # pictures that went through the image encoder
    inference: str | None = None  # the image tower's path (encoders/inference.py); None when no model was loaded
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process and its decode workers during the run
    decode_cpu_seconds: float = 0.0  # the decode workers' part of it (0 when decoding runs in threads)
    # Folders the scan could not read ({path, error, pictures_kept}); the rows under them were kept untouched.
    unreadable_folders: list[dict] = field(default_factory=list)
    pictures_kept: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Progress:
    """What the pipeline tells its caller; the CLI draws a bar from it."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class _Batch:
    """Row writes waiting for one transaction, and the pixels whose vectors they need."""

    inserts: list[dict] = field(default_factory=list)
    updates: list[tuple[int, dict]] = field(default_factory=list)
    pixels: list[np.ndarray] = field(default_factory=list)
    # (insert or update entry, index into pixels) for rows whose vector comes from the encoder
    needs_vector: list[tuple[dict, int]] = field(default_factory=list)
    # rows copying the vector of a picture being encoded in this batch: (entry, hash)
    copies: list[tuple[dict, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates)


def _ordered_map(fn: Callable, items: Iterable, workers: int, window: int) -> Iterator:
    """fn over items in a thread pool, results in order, at most `window` in flight (flat memory)."""
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


class IndexRun:
    """One `search index` run. Each batch of rows and vectors is one transaction, so a run
    stopped at any instant leaves a library the next run completes."""

    def __init__(self, library: Library, encoder: EncoderSource, options: IndexOptions, progress: Progress):
        self.library = library
        self.store = library.store
        self._encoder_source = encoder
        self.encoder: ImageEncoder | None = None
        self.options = options
        self.progress = progress
        self.summary = IndexSummary()
        self.vectors = None
        self.known_hashes: set[str] = set()
        self.in_flight: set[str] = set()  # hashes queued for encoding and not yet stored
        # Rows whose file is gone, by content: each can be the target of one move (identical files share a hash).
        self.gone_by_hash: dict[str, list[PictureState]] = {}
        self.moved_ids: set[int] = set()  # gone rows that a move gave a new path
        self.vanished: list[PictureState] = []  # rows whose file was deleted between the scan and its reading
        self.hash_kind = self.store.reads.content_hash_kind()

    def _load_encoder(self, pictures: int) -> None:
        """The model, on the inference path the library records (a new library records the encoder's). A
        function that loads it is told how many pictures it will embed (a few: load fast rather than run fast)."""
        source = self._encoder_source
        self.encoder = source(pictures) if callable(source) else source
        self.library.adopt_or_check_model(self.encoder.fingerprint)
        if self.library.model.inference != self.encoder.inference:
            self.store.writes.set_inference(self.encoder.inference)
        self.summary.inference = self.encoder.inference
        self.batch_size = self.options.batch_size or default_batch_size(self.encoder.device)
        self.split = self.encoder.split

    def run(self, roots: list[str]) -> IndexSummary:
        started, (own_cpu, workers_cpu) = time.perf_counter(), _cpu_seconds()
        scanned: dict[str, ScannedFile] = {}
        unreadable: dict[str, str] = {}  # path → why it could not be read
        for found in scan(roots, self.options.scan):
            if isinstance(found, UnreadableFolder):
                unreadable[found.path] = found.error
            else:
                scanned[found.path] = found
        known = self.store.reads.states_under(roots)
        gone = self._gone(known, scanned, unreadable)
        self.known_hashes = self.store.reads.content_hashes()
        todo = []
        for path, file in scanned.items():
            state = known.get(path)
            if state and state.size == file.size and state.mtime_ns == file.mtime_ns:
                if not state.retry_due():
                    self.summary.unchanged += 1
                    continue
                self.summary.retried += 1
            todo.append((file, state))
        if todo or not self.library.exists():
            self._load_encoder(len(todo))
        self.vectors = self.library.vector_index(writer=True)
        self.progress.start(len(todo))
        states = {file.path: state for file, state in todo}
        batch = _Batch()
        for item in self._prepared(file for file, _ in todo) if todo else ():
            self._route(item, states[item.file.path], batch)
            self.progress.advance()
            if len(batch.pixels) >= self.batch_size or len(batch) >= 4 * self.batch_size:
                self._commit(batch)
                batch = _Batch()
        self._commit(batch)
        self._remove([s for s in gone.values() if s.id not in self.moved_ids] + self.vanished)
        if self.vectors.ntotal != self.store.reads.counts()["pictures"]:
            self.vectors = self.library.vector_index(writer=False)  # out of step: rebuild from rows
        self.vectors.save(self.library.folder, self.store)
        self.store.writes.mark_indexed(roots, unreadable)
        self.summary.seconds = time.perf_counter() - started
        own_now, workers_now = _cpu_seconds()
        self.summary.decode_cpu_seconds = workers_now - workers_cpu
        self.summary.cpu_seconds = own_now - own_cpu + self.summary.decode_cpu_seconds
        return self.summary

    def _gone(self, known: dict[str, PictureState], scanned: dict[str, ScannedFile],
              unreadable: dict[str, str]) -> dict[str, PictureState]:
        """Rows whose file is gone (not scanned, and not inside a folder the scan could not read), filed by
        content as move targets. The rows inside unreadable folders are kept untouched, counted in the summary."""
        gone: dict[str, PictureState] = {}
        kept = dict.fromkeys(unreadable, 0)
        for path, state in known.items():
            if path in scanned:
                continue
            folder = unreadable_ancestor(path, unreadable)
            if folder is not None:
                kept[folder] += 1
                continue
            gone[path] = state
            if state.status == OK and state.content_hash:
                self.gone_by_hash.setdefault(state.content_hash, []).append(state)
        self.summary.unreadable_folders = [{"path": path, "error": error, "pictures_kept": kept[path]}
                                           for path, error in sorted(unreadable.items())]
        self.summary.pictures_kept = sum(kept.values())
        return gone

    def _prepared(self, files: Iterable) -> Iterator[Prepared]:
        """Files → Prepared, in order, decoded ahead of the encoder by worker processes."""
        min_side = min(self.encoder.image_size)
        skip = frozenset(self.known_hashes) | frozenset(self.gone_by_hash)
        split, max_pixels, hash_kind = self.split, self.options.max_pixels, self.hash_kind
        workers = self.options.workers if self.options.workers is not None else default_workers(self.encoder.device)
        window = max(2 * self.batch_size, 4 * max(workers, 1))

        def work(file):
            return prepare_file(file, min_side, split, skip, max_pixels, hash_kind)

        if workers == 0 or not _can_fork():
            return _ordered_map(work, files, max(1, workers or available_cores()), window)
        def failed(file, reason: str) -> Prepared:  # a decoder that timed out may finish another time
            return Prepared(file, error=reason, transient=reason.startswith(TIMED_OUT))

        pool = DecodePool(work, failed, workers, window,
                          timeout=self.options.decode_timeout, nice=decode_niceness(self.encoder.device))
        return pool.imap(files)

    def _route(self, item: Prepared, state: PictureState | None, batch: _Batch) -> None:
        file = item.file
        if item.vanished:  # deleted between the scan and now: like a file the scan did not see
            if state is not None:
                self.vanished.append(state)
            return
        base = {"path": file.path, "size": file.size, "mtime_ns": file.mtime_ns, "content_hash": item.hash,
                "indexed_at": utcnow()}
        if item.error:
            entry = {**base, "status": FAILED, "error": item.error, "vector": None, "width": None, "height": None,
                     "attempts": _attempts(state, file), "transient": item.transient}
            self._write(batch, state, entry)
            self.summary.failed += 1
            return
        if state and state.content_hash == item.hash and state.status == OK:
            batch.updates.append((state.id, {"size": file.size, "mtime_ns": file.mtime_ns}))  # touched, same bytes
            self.summary.unchanged += 1
            return
        if state is None and self.gone_by_hash.get(item.hash):
            moved = self.gone_by_hash[item.hash].pop()
            self.moved_ids.add(moved.id)
            batch.updates.append((moved.id, {"path": file.path, "size": file.size, "mtime_ns": file.mtime_ns}))
            self.summary.moved += 1
            return
        entry = {**base, "status": OK, "error": None, "attempts": 0, "transient": False}
        if item.hash in self.in_flight:  # same bytes queued earlier in this run
            batch.copies.append((entry, item.hash))
            self.summary.duplicates += 1
        elif item.pixels is None:  # an exact copy of a picture already embedded
            copy = self.store.reads.embedded_copy(item.hash)
            if copy is None:
                # Every row with these bytes was given other content earlier in this run (an edit that kept
                # its original under a new name): decode them after all. The library embedded these bytes
                # before, so decoding them here rather than in an isolated worker is safe.
                self._route(prepare_file(file, min(self.encoder.image_size), self.split, (), self.options.max_pixels,
                                         self.hash_kind), state, batch)
                return
            entry.update(copy)
            self.summary.duplicates += 1
        else:
            entry.update(width=item.width, height=item.height, taken_at=item.taken_at)
            batch.needs_vector.append((entry, len(batch.pixels)))
            batch.pixels.append(item.pixels)
            self.in_flight.add(item.hash)
            self.known_hashes.add(item.hash)
        self._write(batch, state, entry)
        if state is None:
            self.summary.added += 1
        else:
            self.summary.updated += 1

    @staticmethod
    def _write(batch: _Batch, state: PictureState | None, entry: dict) -> None:
        if state is None:
            batch.inserts.append(entry)
        else:
            batch.updates.append((state.id, entry))

    def _commit(self, batch: _Batch) -> None:
        if not len(batch):
            return
        made: dict[str, dict] = {}  # hash → vector and facts of the pictures encoded for this batch
        if batch.pixels:
            vectors = self.encoder.encode_images(self.split.array(batch.pixels))
            self.summary.embedded += len(batch.pixels)
            for entry, position in batch.needs_vector:
                entry["vector"] = np.ascontiguousarray(vectors[position], dtype=np.float32).tobytes()
                made[entry["content_hash"]] = {k: entry[k] for k in ("vector", "width", "height", "taken_at")}
                self.in_flight.discard(entry["content_hash"])
        for entry, digest in batch.copies:
            copy = made.get(digest) or self.store.reads.embedded_copy(digest)
            if copy is None:  # the original failed after all; identical bytes fail alike
                entry.update(status=FAILED, error="could not be embedded (an identical file failed)", vector=None,
                             attempts=1)
            else:
                entry.update(copy)
        # A row whose vector changed or went (it failed now) leaves FAISS; rows with a new vector enter it.
        ids = self.store.writes.commit_batch(batch.updates, batch.inserts)
        stale = [i for i, values in batch.updates if "vector" in values]
        fresh = [(i, values["vector"]) for i, values in [*batch.updates, *zip(ids, batch.inserts, strict=True)]
                 if values.get("status") == OK and "vector" in values]
        self.vectors.remove(np.asarray(stale, dtype=np.int64))
        if fresh:
            ids = np.fromiter((i for i, _ in fresh), dtype=np.int64, count=len(fresh))
            matrix = np.frombuffer(b"".join(v for _, v in fresh), dtype=np.float32).reshape(len(fresh), -1)
            self.vectors.add(ids, matrix)

    def _remove(self, states: list[PictureState]) -> None:
        if not states:
            return
        ids = [s.id for s in states]
        self.store.writes.remove_pictures(ids)
        self.vectors.remove(np.asarray(ids, dtype=np.int64))
        self.summary.removed += len(ids)


def index_folders(library: Library, encoder: EncoderSource, roots: Iterable[str | Path],
                  options: IndexOptions = IndexOptions(), progress: Progress | None = None) -> IndexSummary:
    """Bring the library in step with the roots: add, re-embed, move, remove, record failures. ``encoder``: the
    encoder, or a function that loads it, called (with how many pictures are to be embedded) only when there are
    some."""
    paths = [os.path.abspath(root) for root in roots]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MissingRoot(f"root not found: {', '.join(missing)} (is it unmounted? nothing was changed or deleted)")
    with library.writer_lock(wait=options.lock_wait):
        try:
            return IndexRun(library, encoder, options, progress or Progress()).run(paths)
        except Exception as e:
            problem = storage_error(e, library.folder)
            if problem is None:
                raise
            raise problem from e


def _attempts(state: PictureState | None, file: ScannedFile) -> int:
    """Runs in a row that failed on this file's bytes, this one included."""
    same = state is not None and state.status == FAILED and (state.size, state.mtime_ns) == (file.size, file.mtime_ns)
    return state.attempts + 1 if same else 1


def unreadable_ancestor(path: str, unreadable: Collection[str]) -> str | None:
    """The unreadable folder (or entry) that ``path`` is, or lies under; None when every folder above it was read."""
    while unreadable:
        if path in unreadable:
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent
    return None


def _cpu_seconds() -> tuple[float, float]:
    """CPU time so far of this process and of its finished children (the decode workers)."""
    import resource

    me, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, workers.ru_utime + workers.ru_stime


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()
