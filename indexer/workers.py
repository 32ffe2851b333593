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

    def _spawn(self) -> _Worker:
        worker = _Worker(self.ctx, self.fn, [w.conn for w in self.workers], self.nice)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> list[int]:
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
        source = iter(items)
        inputs: dict[int, Any] = {}
        self._inputs = inputs
        results: dict[int, Any] = {}
        retry: collections.deque[int] = collections.deque()
        state = {"next_in": 0, "next_out": 0, "exhausted": False, "error": None, "stop": False}
        cond = threading.Condition()
        for _ in range(self.workers_wanted):
            self._spawn()

        def take_input() -> int | None:
            if retry:
                return retry.popleft()
            if state["exhausted"] or state["next_in"] >= state["next_out"] + self.window:
                return None
            try:
                item = next(source)
            except StopIteration:
                state["exhausted"] = True
                return None
            seq = state["next_in"]
            state["next_in"] += 1
            inputs[seq] = item
            return seq

        def finish(seq: int, value: Any) -> None:
            results[seq] = value
            inputs.pop(seq, None)
            cond.notify_all()

        def dispatch() -> None:
            while not state["stop"]:
                with cond:
                    # feed every worker up to `depth` tasks, within the read-ahead window
                    for worker in list(self.workers):
                        while len(worker.queue) < self.depth:
                            seq = take_input()
                            if seq is None:
                                break
                            if not worker.queue:
                                worker.head_started = time.monotonic()
                            try:
                                worker.conn.send((seq, inputs[seq]))
                            except OSError:  # died meanwhile: noticed below
                                retry.appendleft(seq)
                                break
                            worker.queue.append(seq)
                    busy = [w for w in self.workers if w.queue]
                    if not busy and (state["exhausted"] and not retry and not inputs):
                        cond.notify_all()
                        return
                if not busy:
                    with cond:
                        if not state["stop"]:
                            cond.wait(0.05)  # window full: wait for the consumer
                    continue
                now = time.monotonic()
                wait_for = max(0.0, min(w.head_started + self.timeout for w in busy) - now)
                # Only the pipes: a worker closes every inherited descriptor, the write end of its process
                # sentinel included, so sentinels read as ready at once and waiting on them would spin.
                # A worker that dies closes its pipe, which reads as end-of-file here.
                ready = wait([w.conn for w in busy], timeout=min(wait_for, 0.1))
                with cond:
                    for worker in busy:
                        self._poll(worker, ready, finish, retry)
                    now = time.monotonic()
                    for worker in [w for w in self.workers if w.queue]:
                        if now - worker.head_started > self.timeout:
                            seq = worker.queue[0]
                            retry.extend(self._retire(worker))
                            finish(seq, self.on_error(inputs[seq], f"{TIMED_OUT}: decoding took longer than "
                                                                   f"{self.timeout:g}s"))
                            self._spawn()

        def run_dispatch() -> None:
            try:
                dispatch()
            except BaseException as e:  # surfaced to the consumer, never lost in a thread
                with cond:
                    state["error"] = e
                    cond.notify_all()

        thread = threading.Thread(target=run_dispatch, name="decode-dispatch", daemon=True)
        thread.start()
        try:
            while True:
                with cond:
                    while state["next_out"] not in results:
                        if state["error"] is not None:
                            raise state["error"]
                        if state["exhausted"] and state["next_out"] >= state["next_in"]:
                            return
                        cond.wait(0.5)
                    value = results.pop(state["next_out"])
                    state["next_out"] += 1
                    cond.notify_all()
                yield value
        finally:
            with cond:
                state["stop"] = True
                cond.notify_all()
            thread.join(timeout=5)
            self.close()

    def _poll(self, worker: _Worker, ready: list, finish: Callable, retry: collections.deque) -> None:
        if worker not in self.workers:
            return
        if worker.conn in ready:
            try:
                while worker.conn.poll():
                    seq, ok, value = worker.conn.recv()
                    if worker.queue and worker.queue[0] == seq:
                        worker.queue.popleft()
                    worker.head_started = time.monotonic()
                    finish(seq, value if ok else self.on_error(self._input_of(seq), value))
            except (EOFError, OSError):  # the worker is gone
                worker.conn.close()
        if worker.conn.closed or not worker.process.is_alive():
            worker.process.join(timeout=1)
            code = worker.process.exitcode
            if worker.queue:
                seq = worker.queue[0]
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                retry.extend(self._retire(worker))
                finish(seq, self.on_error(self._input_of(seq), f"the decoder crashed on this file ({how})"))
            else:
                self._retire(worker)
            self._spawn()

    def _input_of(self, seq: int) -> Any:
        return self._inputs.get(seq)
