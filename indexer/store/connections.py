"""The read side's DB-API connections to one library: a few kept open and lent out one caller at a time.

A connection is lent whole (the page answers several sessions from threads at once); one that failed is
closed, not lent again. Errors that mean something to the user (a damaged file, a server gone) become
one LibraryError line here.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

KEPT = 4  # idle connections kept for the next caller


class Connections:
    def __init__(self, dialect):
        self.dialect = dialect
        self._idle: list = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lent(self) -> Iterator:
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._translated(self.dialect.connect)
        try:
            yield connection
        except BaseException:
            _close(connection)
            raise
        with self._lock:
            if len(self._idle) < KEPT:
                self._idle.append(connection)
                connection = None
        if connection is not None:
            _close(connection)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator:
        """A connection inside one read transaction: every read sees the same state of the library."""
        with self.lent() as connection:
            self.execute(connection, self.dialect.begin_read)
            yield connection  # on an error the connection is closed, which ends the transaction
            self.execute(connection, "ROLLBACK")

    def execute(self, connection, sql: str, params=()):
        return self._translated(connection.execute, self.dialect.statement(sql), self.dialect.parameters(params))

    def _translated(self, call, *args):
        try:
            return call(*args)
        except self.dialect.errors as e:
            problem = self.dialect.library_error(e)
            if problem is None:
                raise
            raise problem from e

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            _close(connection)


def _close(connection) -> None:
    try:
        connection.close()
    except Exception:  # already broken: nothing left to release
        pass
