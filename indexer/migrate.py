"""Bring a library's database to this release's schema with its Alembic migrations (``indexer/migrations``).

An upgrade runs in one transaction, holding SQLite's write lock from its first statement
(``BEGIN IMMEDIATE``): a crash or an error midway leaves the old schema as it was, and two processes
upgrading at once take turns, the second finding nothing left to do. A new library is made the same
way, from an empty database.
"""

from __future__ import annotations

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


def upgrade(engine: Engine) -> None:
    """Upgrade to the newest revision, all or nothing."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # pysqlite would commit before each DDL statement on its own; one explicit transaction holds them all.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        command.upgrade(config(connection), "head")
        connection.commit()
