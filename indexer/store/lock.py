"""One writer per library: the kernel's flock on the library folder's lock file for a SQLite library, the
server's advisory lock for a PostgreSQL one (two processes on two machines can never both write).

Both die with their holder: a writer killed with -9 releases the flock with its last breath, and the
server releases the advisory lock when the holder's connection drops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import LibraryError

LOCK_NAME = "library.lock"
DEAD_HOLDER_GRACE = 10.0  # seconds a dead writer's children may keep the lock while they exit
WRITER = "clipsearch writer"  # how a PostgreSQL writer's connection names itself (its application_name)


class LibraryBusy(LibraryError):
    pass


class FolderLock:
    """flock on LIBRARY/library.lock, which names its holder's process id."""

    def __init__(self, folder: Path):
        self.handle = open(folder / LOCK_NAME, "a+")

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()
        return True

    def holder(self) -> tuple[int, str] | None:
        self.handle.seek(0)
        text = self.handle.read().strip()
        return (int(text), socket.gethostname()) if text.isdigit() else None

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)

    def close(self) -> None:
        self.handle.close()


class AdvisoryLock:
    """pg_advisory_lock keyed by the library's schema, held by a connection of its own that names its holder."""

    def __init__(self, dialect):
        # Advisory locks belong to one database: the key needs to tell apart only the schemas within it.
        digest = hashlib.blake2b(f"clipsearch library {dialect.schema}".encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)
        self.connection = dialect.connect(application=f"{WRITER} {os.getpid()}@{socket.gethostname()}")

    def try_acquire(self) -> bool:
        return self.connection.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()[0]

    def holder(self) -> tuple[int, str] | None:
        # pg_locks shows a bigint key as its high and low 32 bits (classid, objid; objsubid 1).
        row = self.connection.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = %s "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.objid::bigint = %s", [(self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF]).fetchone()
        pid, _, host = row[0].removeprefix(f"{WRITER} ").partition("@") if row else ("", "", "")
        return (int(pid), host) if pid.isdigit() else None

    def release(self) -> None:
        self.connection.execute("SELECT pg_advisory_unlock(%s)", [self.key])

    def close(self) -> None:
        self.connection.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def writer_lock(store, folder: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold the library for writing. A second writer waits up to ``wait`` seconds (0: refused at once) and is
    then refused with `LibraryBusy`, naming the process that holds the library; never interleaved."""
    lock = AdvisoryLock(store.dialect) if store.dialect.name == "postgresql" else FolderLock(folder)
    try:
        deadline = time.monotonic() + wait
        grace = True
        while not lock.try_acquire():
            holder = lock.holder()
            if grace and holder and holder[1] == socket.gethostname() and not _alive(holder[0]):
                # The writer is gone (killed, Ctrl-C): its decode workers, which share the lock, exit within
                # moments of it. Re-running the command right away must not be refused.
                deadline, grace = max(deadline, time.monotonic() + DEAD_HOLDER_GRACE), False
            if time.monotonic() >= deadline:
                raise LibraryBusy(f"another `search index`{_named(holder)} is writing to {store.where}; wait for it "
                                  f"to finish, then run this command again") from None
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        try:
            yield
        finally:
            lock.release()
    finally:
        lock.close()


def _named(holder: tuple[int, str] | None) -> str:
    if holder is None:
        return ""
    pid, host = holder
    return f" (process {pid})" if host == socket.gethostname() else f" (process {pid} on {host})"
