"""Bring a library's database to this release's schema with its Alembic migrations (``migrations/`` here).

An upgrade runs in one transaction, holding SQLite's write lock from its first statement (``BEGIN
IMMEDIATE``) or a PostgreSQL advisory lock of its own (DDL is transactional there): a crash or an error
midway leaves the old schema as it was, and two processes upgrading at once take turns, the second
finding nothing left to do. A new library is made the same way, from an empty database (in PostgreSQL,
in a schema of its own, made by the same transaction).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(config()).get_current_head()


def upgrade(engine: Engine, schema: str | None = None) -> None:
    """Upgrade to the newest revision, all or nothing; ``schema``: the PostgreSQL schema holding the library."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # pysqlite would commit before each DDL statement on its own; one explicit transaction holds them all.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            key = int.from_bytes(hashlib.blake2b(f"clipsearch upgrade {schema}".encode(), digest_size=8).digest(),
                                 "big", signed=True)
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({key})")
            connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        command.upgrade(config(connection), "head")
        connection.commit()
