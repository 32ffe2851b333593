"""Decode pictures in worker processes: in parallel, overlapped with encoding, isolated, read-ahead bounded.

Why processes and not threads: the main process runs the encoder; decoding and resizing
in threads would share its interpreter lock. A worker process that hangs (a stalled
network mount, a pathological file) is killed after a per-file timeout and replaced; one
that crashes (a decoder bug) costs that one file, never the run.

Workers are forked from the indexer, so they start at once and inherit the model's
transform; they only ever run Pillow and numpy code (never torch ops, never the
database), close every pipe that is not theirs, and die with their parent (even
after ``kill -9``).
"""

from __future__ import annotations

import collections
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

DEFAULT_TIMEOUT = 60.0  # seconds for one file: a 200-megapixel PNG decodes in well under that
TIMED_OUT = "timed out"  # how the reason of a file whose decode took too long begins
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed pipe still ends the worker
        pass


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


def _worker_loop(conn: Connection, others: list[Connection], fn: Callable[[Any], Any], nice: int) -> None:
    _die_with_parent()
    if nice:
        os.nice(nice)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    for other in others:
        other.close()
    # Drop every other inherited descriptor: the library's lock (a killed indexer's lock must die with
    # it, not live on in a worker), its database files, the other workers' pipes.
    own = conn.fileno()
    os.closerange(3, own)
    os.closerange(own + 1, _max_fd())
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            seq, item = message
            try:
                result = (seq, True, fn(item))
            except BaseException as e:  # reported to the parent, which decides what a failure means
                result = (seq, False, f"{type(e).__name__}: {e}")
            conn.send(result)
    finally:
        os._exit(0)  # no atexit handlers, no finalizers of objects inherited from the parent


class _Worker:
    def __init__(self, ctx, fn, others: list[Connection], nice: int):
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_loop, args=(child, others, fn, nice), daemon=True)
        self.process.start()
        child.close()
        self.queue: collections.deque[int] = collections.deque()  # seqs sent, oldest first
        self.head_started = time.monotonic()

    def kill(self) -> None:
        try:
            self.process.kill()
        except Exception:
            pass
        self.conn.close()
        self.process.join(timeout=1)


class DecodePool:
    """``fn`` over items in worker processes, results in input order, at most ``window`` results ahead.

    ``on_error(item, reason)`` turns a timeout, a crashed worker or an exception escaping
    ``fn`` into that item's result, so every item yields exactly one result.
    """

    def __init__(self, fn: Callable[[Any], Any], on_error: Callable[[Any, str], Any], workers: int,
                 window: int, timeout: float = DEFAULT_TIMEOUT, depth: int = 2, nice: int = 0):
        self.fn = fn
        self.on_error = on_error
        self.workers_wanted = max(1, workers)
        self.window = max(window, self.workers_wanted * depth)
        self.timeout = timeout
        self.depth = depth
        self.nice = nice  # added to the workers' niceness
        self.ctx = mp.get_context("fork")
        self.workers: list[_Worker] = []

    # -- worker management --------------------------------------------------------------

    def spawn(self) -> _Worker:
        worker = _Worker(self.ctx, self.fn, [w.conn for w in self.workers], self.nice)
        self.workers.append(worker)
        return worker

    def retire(self, worker: _Worker) -> list[int]:
        """Kill a worker; the seqs it still held, except its head, go back to be sent again."""
        worker.kill()
        self.workers.remove(worker)
        return list(worker.queue)[1:]

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 2
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.kill()
            else:
                worker.conn.close()
        self.workers = []

    # -- the ordered map ----------------------------------------------------------------

    def imap(self, items: Iterable[Any]) -> Iterator[Any]:
        """Results in order. A dispatcher thread keeps workers fed while the caller encodes."""
        yield from _OrderedMap(self, items).results()


class _OrderedMap:
    """One ``DecodePool.imap`` run: the dispatcher thread's side (feed workers, collect, time out, respawn)
    and the consumer's side (results in input order), sharing one condition."""

    def __init__(self, pool: DecodePool, items: Iterable[Any]):
        self.pool = pool
        self.source = iter(items)
        self.inputs: dict[int, Any] = {}
        self.results_ready: dict[int, Any] = {}
        self.retry: collections.deque[int] = collections.deque()
        self.next_in = self.next_out = 0
        self.exhausted = self.stop = False
        self.error: BaseException | None = None
        self.cond = threading.Condition()

    # -- the dispatcher thread -----------------------------------------------------------

    def _take_input(self) -> int | None:
        if self.retry:
            return self.retry.popleft()
        if self.exhausted or self.next_in >= self.next_out + self.pool.window:
            return None
        try:
            item = next(self.source)
        except StopIteration:
            self.exhausted = True
            return None
        seq = self.next_in
        self.next_in += 1
        self.inputs[seq] = item
        return seq

    def _finish(self, seq: int, value: Any) -> None:
        self.results_ready[seq] = value
        self.inputs.pop(seq, None)
        self.cond.notify_all()

    def _failed(self, seq: int, reason: str) -> None:
        self._finish(seq, self.pool.on_error(self.inputs.get(seq), reason))

    def _feed_workers(self) -> None:
        """Every worker gets up to ``depth`` tasks, within the read-ahead window."""
        for worker in list(self.pool.workers):
            while len(worker.queue) < self.pool.depth:
                seq = self._take_input()
                if seq is None:
                    break
                if not worker.queue:
                    worker.head_started = time.monotonic()
                try:
                    worker.conn.send((seq, self.inputs[seq]))
                except OSError:  # died meanwhile: noticed by _collect
                    self.retry.appendleft(seq)
                    break
                worker.queue.append(seq)

    def _dispatch(self) -> None:
        pool = self.pool
        while not self.stop:
            with self.cond:
                self._feed_workers()
                busy = [w for w in pool.workers if w.queue]
                if not busy and (self.exhausted and not self.retry and not self.inputs):
                    self.cond.notify_all()
                    return
            if not busy:
                with self.cond:
                    if not self.stop:
                        self.cond.wait(0.05)  # window full: wait for the consumer
                continue
            wait_for = max(0.0, min(w.head_started + pool.timeout for w in busy) - time.monotonic())
            # Only the pipes: a worker closes every inherited descriptor, the write end of its process
            # sentinel included, so sentinels read as ready at once and waiting on them would spin.
            # A worker that dies closes its pipe, which reads as end-of-file here.
            ready = wait([w.conn for w in busy], timeout=min(wait_for, 0.1))
            with self.cond:
                for worker in busy:
                    self._collect(worker, ready)
                self._time_out_stuck_workers()

    def _collect(self, worker: _Worker, ready: list) -> None:
        """Take a worker's finished results; a worker that died costs the file it was on and is replaced."""
        pool = self.pool
        if worker not in pool.workers:
            return
        if worker.conn in ready:
            try:
                while worker.conn.poll():
                    seq, ok, value = worker.conn.recv()
                    if worker.queue and worker.queue[0] == seq:
                        worker.queue.popleft()
                    worker.head_started = time.monotonic()
                    if ok:
                        self._finish(seq, value)
                    else:
                        self._failed(seq, value)
            except (EOFError, OSError):  # the worker is gone
                worker.conn.close()
        if worker.conn.closed or not worker.process.is_alive():
            worker.process.join(timeout=1)
            code = worker.process.exitcode
            if worker.queue:
                seq = worker.queue[0]
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                self.retry.extend(pool.retire(worker))
                self._failed(seq, f"the decoder crashed on this file ({how})")
            else:
                pool.retire(worker)
            pool.spawn()

    def _time_out_stuck_workers(self) -> None:
        pool = self.pool
        now = time.monotonic()
        for worker in [w for w in pool.workers if w.queue]:
            if now - worker.head_started > pool.timeout:
                seq = worker.queue[0]
                self.retry.extend(pool.retire(worker))
                self._failed(seq, f"{TIMED_OUT}: decoding took longer than {pool.timeout:g}s")
                pool.spawn()

    def _run_dispatch(self) -> None:
        try:
            self._dispatch()
        except BaseException as e:  # surfaced to the consumer, never lost in a thread
            with self.cond:
                self.error = e
                self.cond.notify_all()

    # -- the consumer --------------------------------------------------------------------

    def results(self) -> Iterator[Any]:
        for _ in range(self.pool.workers_wanted):
            self.pool.spawn()
        thread = threading.Thread(target=self._run_dispatch, name="decode-dispatch", daemon=True)
        thread.start()
        try:
            while True:
                with self.cond:
                    while self.next_out not in self.results_ready:
                        if self.error is not None:
                            raise self.error
                        if self.exhausted and self.next_out >= self.next_in:
                            return
                        self.cond.wait(0.5)
                    value = self.results_ready.pop(self.next_out)
                    self.next_out += 1
                    self.cond.notify_all()
                yield value
        finally:
            with self.cond:
                self.stop = True
                self.cond.notify_all()
            thread.join(timeout=5)
            self.pool.close()
