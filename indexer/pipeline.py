"""scan → decode → encode → store → index: one incremental run over a library's roots."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import delete, select

from encoders import ClipEncoder

from .decode import MAX_PIXELS, DecodeError, content_hash, decode_picture
from .library import Library, LibraryError
from .scan import ScannedFile, ScanOptions, scan
from .store import FAILED, OK, Picture, PictureState, utcnow, vector_bytes


class MissingRoot(LibraryError):
    pass


def default_batch_size(device: torch.device) -> int:
    return 128 if device.type == "cuda" else 32


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class IndexOptions:
    batch_size: int | None = None
    workers: int | None = None
    scan: ScanOptions = ScanOptions()
    max_pixels: int = MAX_PIXELS


@dataclass
class IndexSummary:
    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    unchanged: int = 0
    duplicates: int = 0  # exact copies of a picture already embedded: vector copied, not encoded
    embedded: int = 0  # pictures that went through the image encoder
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Progress:
    """What the pipeline tells its caller; the CLI draws a bar from it."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


@dataclass
class Prepared:
    """A scanned file after the worker: hashed, and decoded to a model tensor when it needs encoding."""

    file: ScannedFile
    hash: str | None = None
    tensor: torch.Tensor | None = None
    width: int | None = None
    height: int | None = None
    taken_at: object = None
    error: str | None = None
    vanished: bool = False


@dataclass
class _Batch:
    """Row writes waiting for one transaction, and the tensors whose vectors they need."""

    inserts: list[dict] = field(default_factory=list)
    updates: list[tuple[int, dict]] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    # (insert or update entry, index into tensors) for rows whose vector comes from the encoder
    needs_vector: list[tuple[dict, int]] = field(default_factory=list)
    # rows copying the vector of a picture being encoded in this batch: (entry, hash)
    copies: list[tuple[dict, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inserts) + len(self.updates)


def _prepare(file: ScannedFile, encoder: ClipEncoder, skip_decode: Callable[[str], bool], max_pixels: int) -> Prepared:
    if file.problem:
        return Prepared(file, error=file.problem)
    try:
        data = Path(file.path).read_bytes()
    except FileNotFoundError:
        return Prepared(file, vanished=True)
    except OSError as e:
        return Prepared(file, error=f"unreadable: {e.strerror or e}")
    prepared = Prepared(file, hash=content_hash(data))
    if skip_decode(prepared.hash):
        return prepared
    try:
        picture = decode_picture(data, min(encoder.image_size), max_pixels)
        prepared.tensor = encoder.preprocess(picture.image)
        prepared.width, prepared.height, prepared.taken_at = picture.width, picture.height, picture.taken_at
    except DecodeError as e:
        prepared.error = str(e)
    except Exception as e:  # a picture that breaks the transform must not stop the run
        prepared.error = f"{type(e).__name__}: {e}"
    return prepared


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

    def __init__(self, library: Library, encoder: ClipEncoder, options: IndexOptions, progress: Progress):
        self.library = library
        self.store = library.store
        self.encoder = encoder
        self.options = options
        self.progress = progress
        self.batch_size = options.batch_size or default_batch_size(encoder.device)
        self.summary = IndexSummary()
        self.vectors = None
        self.known_hashes: set[str] = set()
        self.fresh: dict[str, dict] = {}  # hash → vector and facts of pictures embedded in this run
        self.in_flight: set[str] = set()  # hashes queued for encoding and not yet stored
        self.gone_by_hash: dict[str, PictureState] = {}  # rows whose file vanished, by content: move targets
        self.moved_hashes: set[str] = set()

    def run(self, roots: list[str]) -> IndexSummary:
        started = time.perf_counter()
        self.library.adopt_or_check_model(self.encoder.fingerprint)
        self.vectors = self.library.vector_index(writer=True)
        scanned = {f.path: f for f in scan(roots, self.options.scan)}
        known = self.store.states_under(roots)
        gone = {path: state for path, state in known.items() if path not in scanned}
        self.gone_by_hash = {s.content_hash: s for s in gone.values() if s.status == OK and s.content_hash}
        with self.store.session() as s:
            self.known_hashes = set(s.scalars(select(Picture.content_hash).where(Picture.status == OK)))
        todo = []
        for path, file in scanned.items():
            state = known.get(path)
            if state and state.size == file.size and state.mtime_ns == file.mtime_ns:
                self.summary.unchanged += 1
            else:
                todo.append((file, state))
        self.progress.start(len(todo))
        states = {file.path: state for file, state in todo}
        workers = self.options.workers or default_workers()
        prepared = _ordered_map(
            lambda f: _prepare(f, self.encoder, self._reusable, self.options.max_pixels),
            (file for file, _ in todo), workers, window=max(2 * self.batch_size, 4 * workers))
        batch = _Batch()
        for item in prepared:
            self._route(item, states[item.file.path], batch)
            self.progress.advance()
            if len(batch.tensors) >= self.batch_size or len(batch) >= 4 * self.batch_size:
                self._commit(batch)
                batch = _Batch()
        self._commit(batch)
        self._remove([s for s in gone.values() if s.content_hash not in self.moved_hashes])
        if self.vectors.ntotal != self.store.counts()["pictures"]:
            self.vectors = self.library.vector_index(writer=False)  # out of step: rebuild from rows
        self.vectors.save(self.library.folder, self.store)
        self.store.mark_indexed(roots)
        self.summary.seconds = time.perf_counter() - started
        return self.summary

    def _reusable(self, digest: str) -> bool:
        return digest in self.known_hashes or digest in self.gone_by_hash

    def _route(self, item: Prepared, state: PictureState | None, batch: _Batch) -> None:
        file = item.file
        if item.vanished:
            return
        base = {"path": file.path, "size": file.size, "mtime_ns": file.mtime_ns, "content_hash": item.hash,
                "indexed_at": utcnow()}
        if item.error:
            entry = {**base, "status": FAILED, "error": item.error, "vector": None, "width": None, "height": None}
            self._write(batch, state, entry)
            self.summary.failed += 1
            return
        if state and state.content_hash == item.hash and state.status == OK:
            batch.updates.append((state.id, {"size": file.size, "mtime_ns": file.mtime_ns}))  # touched, same bytes
            self.summary.unchanged += 1
            return
        if state is None and item.hash in self.gone_by_hash:
            moved = self.gone_by_hash.pop(item.hash)
            self.moved_hashes.add(item.hash)
            batch.updates.append((moved.id, {"path": file.path, "size": file.size, "mtime_ns": file.mtime_ns}))
            self.summary.moved += 1
            return
        entry = {**base, "status": OK, "error": None}
        if item.tensor is None:  # an exact copy of a picture already embedded
            copy = self.fresh.get(item.hash) or self.store.embedded_copy(item.hash)
            if copy is None:
                batch.copies.append((entry, item.hash))
            else:
                entry.update(copy)
            self.summary.duplicates += 1
        elif item.hash in self.in_flight:  # same bytes queued earlier in this run
            batch.copies.append((entry, item.hash))
            self.summary.duplicates += 1
        else:
            entry.update(width=item.width, height=item.height, taken_at=item.taken_at)
            batch.needs_vector.append((entry, len(batch.tensors)))
            batch.tensors.append(item.tensor)
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
        if batch.tensors:
            vectors = self.encoder.encode_images(torch.stack(batch.tensors))
            self.summary.embedded += len(batch.tensors)
            for entry, position in batch.needs_vector:
                entry["vector"] = vector_bytes(vectors[position])
                self.fresh[entry["content_hash"]] = {k: entry[k] for k in ("vector", "width", "height", "taken_at")}
                self.in_flight.discard(entry["content_hash"])
        for entry, digest in batch.copies:
            copy = self.fresh.get(digest) or self.store.embedded_copy(digest)
            if copy is None:  # the original failed after all; identical bytes fail alike
                entry.update(status=FAILED, error="could not be embedded (an identical file failed)", vector=None)
            else:
                entry.update(copy)
        stale, fresh = [], []
        with self.store.session() as s, s.begin():
            for picture_id, values in batch.updates:
                row = s.get(Picture, picture_id)
                if "vector" in values or values.get("status") == FAILED:
                    stale.append(picture_id)
                for key, value in values.items():
                    setattr(row, key, value)
                if row.status == OK and "vector" in values:
                    fresh.append((picture_id, values["vector"]))
            rows = [Picture(**entry) for entry in batch.inserts]
            s.add_all(rows)
            s.flush()
            fresh += [(row.id, row.vector) for row in rows if row.status == OK]
            self.store.bump_generation(s)
        self.vectors.remove(np.asarray(stale, dtype=np.int64))
        if fresh:
            ids = np.fromiter((i for i, _ in fresh), dtype=np.int64, count=len(fresh))
            self.vectors.add(ids, np.frombuffer(b"".join(v for _, v in fresh), dtype=np.float32).reshape(len(fresh), -1))

    def _remove(self, states: list[PictureState]) -> None:
        if not states:
            return
        ids = [s.id for s in states]
        with self.store.session() as s, s.begin():
            s.execute(delete(Picture).where(Picture.id.in_(ids)))
            self.store.bump_generation(s)
        self.vectors.remove(np.asarray(ids, dtype=np.int64))
        self.summary.removed += len(ids)


def index_folders(library: Library, encoder: ClipEncoder, roots: Iterable[str | Path],
                  options: IndexOptions = IndexOptions(), progress: Progress | None = None) -> IndexSummary:
    """Bring the library in step with the roots: add, re-embed, move, remove, record failures."""
    paths = [os.path.abspath(root) for root in roots]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise MissingRoot(f"root not found: {', '.join(missing)} (is it unmounted? nothing was changed or deleted)")
    with library.writer_lock():
        return IndexRun(library, encoder, options, progress or Progress()).run(paths)
