"""Issues 14 and 15: the library's schema is versioned with Alembic migrations shipped in the package; an older
library is upgraded in place, all or nothing (an error or a kill -9 inside a migration step leaves the old
schema), and answers as it did; a library newer than this release is refused, naming both versions. On the
folder's SQLite file and on PostgreSQL alike; the library made by the last release without versions
(tests/data/library-24155e8, a SQLite file) upgrades and answers its recorded queries."""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import DATABASE_URL_ENV, ROOT, both_backends, index_as_the_cli_leaves_it, make_pictures, run_cli
from sqlalchemy import create_engine, inspect

from indexer import Library, LibraryError
from indexer.store.dialects import server
from indexer.store.migrate import MIGRATIONS, config, head_revision
from indexer.store.schema import SCHEMA_VERSION, VERSION_TABLE
from indexer.store.tables import metadata

LEGACY = Path(__file__).parent / "data" / "library-24155e8"  # made by the last release without versions


def legacy_library(tmp_path: Path) -> Path:
    folder = tmp_path / "legacy"
    folder.mkdir()
    for name in ("library.db", "vectors.1.faiss"):
        shutil.copy(LEGACY / name, folder / name)
    return folder


def sqlite_engine(db: Path):
    return create_engine(f"sqlite:///{db}")


def schema_sql(db: Path) -> list[tuple]:
    connection = sqlite3.connect(db)
    try:
        return sorted(connection.execute("SELECT type, name, sql FROM sqlite_master").fetchall())
    finally:
        connection.close()


def raw_engine(folder: Path):
    """SQLAlchemy on a library's database as it is, never checked nor upgraded: the folder's SQLite file, or the
    library's schema in the PostgreSQL database at $SEARCH_DATABASE_URL."""
    url = os.environ.get(DATABASE_URL_ENV)
    return server(url).sqlalchemy_engine() if url else sqlite_engine(folder / "library.db")


def structure(engine) -> dict:
    """Tables, columns (name, type, nullable), keys and indexes, as SQLAlchemy reflects them."""
    seen = inspect(engine)
    out = {table: ([(c["name"], str(c["type"]), c["nullable"]) for c in seen.get_columns(table)],
                   seen.get_pk_constraint(table)["constrained_columns"],
                   sorted(tuple(u["column_names"]) for u in seen.get_unique_constraints(table)),
                   sorted((tuple(f["constrained_columns"]), f["referred_table"], f["options"].get("ondelete"))
                          for f in seen.get_foreign_keys(table)),
                   sorted((i["name"], tuple(i["column_names"])) for i in seen.get_indexes(table)))
           for table in seen.get_table_names()}
    engine.dispose()
    return out


def as_made_before_versions(folder: Path, drop: tuple[str, ...] = ()) -> None:
    """Turn a library into one as the releases before versions made it: revision 0001's tables (less ``drop``,
    tables that came in later releases), no alembic_version."""
    engine = raw_engine(folder)
    with engine.connect() as connection:
        command.downgrade(config(connection), "0001")
        connection.commit()
    with engine.begin() as connection:
        for table in ("alembic_version", *drop):
            connection.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()


@both_backends
def test_the_migrations_make_exactly_the_models_schema(tmp_path):
    library = Library.open(tmp_path / "lib", create=True)
    with library.store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head_revision()
    assert library.store.schema == SCHEMA_VERSION == int(head_revision())


def test_revision_1_is_the_schema_of_the_releases_before_versions(tmp_path):
    db = tmp_path / "library.db"
    engine = sqlite_engine(db)
    with engine.connect() as connection:
        command.upgrade(config(connection), "0001")
        connection.commit()
        connection.exec_driver_sql("DROP TABLE alembic_version")
        connection.commit()
    engine.dispose()
    legacy = structure(sqlite_engine(LEGACY / "library.db"))
    assert structure(sqlite_engine(db)) == legacy
    assert schema_sql(db) == schema_sql(LEGACY / "library.db")  # the very statements the old release ran

    folder = tmp_path / "downgraded"
    Library.open(folder, create=True).store.close()
    as_made_before_versions(folder)
    assert structure(sqlite_engine(folder / "library.db")) == legacy


def test_the_migrations_are_shipped_in_the_package():
    package_data = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    line = next(line for line in package_data.splitlines() if line.startswith('"indexer.store" ='))
    globs = ast.literal_eval(line.split("=", 1)[1].strip())
    files = [p.relative_to(ROOT / "indexer" / "store").as_posix() for p in MIGRATIONS.rglob("*.py")]
    assert len(files) >= 3  # env.py and the revisions
    assert all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert "alembic" in (ROOT / "setup.py").read_text()


def test_a_library_made_before_versions_is_upgraded_in_place_and_answers_as_it_did(tmp_path):
    folder = legacy_library(tmp_path)
    before = schema_sql(folder / "library.db")
    assert not any(name == "alembic_version" for _, name, _ in before)
    # The first command to open it (a query) upgrades it.
    result = run_cli("query", "a red circle", "--library", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    expected = json.loads((LEGACY / "query-a-red-circle.json").read_text())["results"]
    got = json.loads(result.stdout)["results"]
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)

    status = json.loads(run_cli("status", "--library", str(folder), "--failed", "--json", check=True).stdout)
    assert (status["schema"], status["pictures"], status["failed"]) == (SCHEMA_VERSION, 8, 1)
    assert status["inference"] == "fp32-eager"  # what filled every library before the path was recorded
    assert status["failures"] == [{"path": "/tmp/clipsearch-legacy/pictures/broken.jpg",
                                   "error": "not a picture (unrecognised format)", "retries": 0, "retry": False}]
    tagged = run_cli("query", "a red circle", "--tag", "blue", "--library", str(folder), "--paths-only", check=True)
    connection = sqlite3.connect(LEGACY / "library.db")
    blue = connection.execute("SELECT CAST(path AS TEXT) FROM pictures JOIN picture_tags ON picture_id = id "
                              "WHERE tag = 'blue'").fetchall()
    connection.close()
    assert tagged.stdout.split() == [path for (path,) in blue] and blue  # tags kept
    library = Library.open(folder)
    assert library.store.schema == SCHEMA_VERSION
    assert library.vector_index().ntotal == 8 and library.model.index_proof() is not None  # saved with its proof


def test_an_old_failure_that_may_have_been_transient_is_retried_after_the_upgrade(tmp_path):
    folder = legacy_library(tmp_path)
    connection = sqlite3.connect(folder / "library.db")
    connection.execute("UPDATE pictures SET error = 'timed out: decoding took longer than 60s' WHERE status = 'failed'")
    connection.commit()
    connection.close()
    assert Library.open(folder).store.reads.failed_files() == [{"path": "/tmp/clipsearch-legacy/pictures/broken.jpg",
                                                          "error": "timed out: decoding took longer than 60s",
                                                          "retries": 0, "retry": True}]


def test_an_upgrade_that_fails_midway_leaves_the_old_schema_as_it_was(tmp_path):
    folder = legacy_library(tmp_path)
    db = folder / "library.db"
    connection = sqlite3.connect(db)
    connection.execute("ALTER TABLE pictures ADD COLUMN transient TEXT")  # revision 2 adds it after other columns
    connection.commit()
    connection.close()
    before, data = schema_sql(db), db.read_bytes()
    result = run_cli("status", "--library", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "could not upgrade the library" in result.stderr
    assert f"from schema 0 to {SCHEMA_VERSION}" in result.stderr and "left as it was" in result.stderr
    assert schema_sql(db) == before and db.read_bytes() == data


def test_two_processes_opening_an_old_library_at_once_upgrade_it_once(tmp_path):
    folder = legacy_library(tmp_path)
    errors, opened = [], []

    def open_it():
        try:
            opened.append(Library.open(folder).store.schema)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and opened == [SCHEMA_VERSION] * 3
    connection = sqlite3.connect(folder / "library.db")
    assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]
    connection.close()


def newer_library(folder: Path) -> None:
    connection = sqlite3.connect(folder / "library.db")
    connection.execute(f"UPDATE alembic_version SET version_num = '{SCHEMA_VERSION + 1:04d}'")
    connection.execute("ALTER TABLE pictures ADD COLUMN a_later_release TEXT")
    connection.commit()
    connection.close()


def test_a_library_newer_than_this_release_is_refused_naming_both_versions(tmp_path):
    folder = legacy_library(tmp_path)
    Library.open(folder).store.close()  # now at this release's schema
    newer_library(folder)
    data = (folder / "library.db").read_bytes()
    with pytest.raises(LibraryError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this clipsearch "
                                           rf"understands \(schema {SCHEMA_VERSION}\)"):
        Library.open(folder)
    for args in (("query", "a dog"), ("status",)):
        result = run_cli(*args, "--library", str(folder))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"schema version {SCHEMA_VERSION + 1}" in result.stderr and f"(schema {SCHEMA_VERSION})" in result.stderr
    assert (folder / "library.db").read_bytes() == data


def test_a_read_only_library_made_before_versions_says_how_to_upgrade_it(tmp_path, monkeypatch):
    import indexer.store.sqlitefile

    folder = legacy_library(tmp_path)
    monkeypatch.setattr(indexer.store.sqlitefile, "writable", lambda db: False)  # as on a read-only mount
    with pytest.raises(LibraryError, match="made by an older clipsearch .schema 0; this release uses schema "
                                           f"{SCHEMA_VERSION}. and cannot be upgraded here, where it is read-only"):
        Library.open(folder)
    assert schema_sql(folder / "library.db") == schema_sql(LEGACY / "library.db")


# -- on both backends: a library made by this release, taken back to revision 0001 ------------------------


@pytest.fixture
def older(tmp_path, tiny_encoder):
    """A library of 8 pictures, one failure and tags, then taken back to the schema every release before versions
    made (0001, no version table); with what it answered before. Yields (folder, answers)."""
    from search.tools import tag_pictures

    pictures = tmp_path / "pictures"
    make_pictures(pictures, 8)
    (pictures / "broken.jpg").write_bytes(b"not a picture")
    library = Library.open(tmp_path / "lib", create=True)
    index_as_the_cli_leaves_it(library, tiny_encoder, [pictures])
    tag_pictures(library, tiny_encoder, ["red", "blue"], templates=["{}"])
    answers = {args: run_cli("query", *args, "--library", str(library.folder), "--json", check=True).stdout
               for args in (("a red circle",), ("a red circle", "--tag", "blue"))}
    library.store.close()
    as_made_before_versions(library.folder)
    assert VERSION_TABLE not in inspect(raw_engine(library.folder)).get_table_names()
    return library.folder, answers


def results(stdout: str) -> list[tuple]:
    return [(r["path"], round(r["score"], 5)) for r in json.loads(stdout)["results"]]


@both_backends
def test_an_older_library_is_upgraded_in_place_and_answers_as_it_did(older):
    folder, answers = older
    status = json.loads(run_cli("status", "--library", str(folder), "--failed", "--json", check=True).stdout)
    assert (status["schema"], status["pictures"], status["failed"]) == (SCHEMA_VERSION, 8, 1)
    assert [f["path"].rsplit("/", 1)[1] for f in status["failures"]] == ["broken.jpg"]
    for args, before in answers.items():
        after = run_cli("query", *args, "--library", str(folder), "--json", check=True).stdout
        assert results(after) == results(before) and results(before)
    with raw_engine(folder).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), metadata) == []


@both_backends
def test_an_upgrade_that_fails_midway_leaves_the_older_schema_as_it_was(older):
    folder, answers = older
    with raw_engine(folder).begin() as connection:  # revision 2 adds it after other columns
        connection.exec_driver_sql("ALTER TABLE pictures ADD COLUMN transient TEXT")
    before = structure(raw_engine(folder))
    result = run_cli("status", "--library", str(folder))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "could not upgrade the library" in result.stderr
    assert f"from schema 0 to {SCHEMA_VERSION}" in result.stderr and "left as it was" in result.stderr
    assert structure(raw_engine(folder)) == before


KILLED_INSIDE_REVISION_2 = """
import os, signal, sys
from pathlib import Path
from sqlalchemy import event
from sqlalchemy.engine import Engine

@event.listens_for(Engine, "before_cursor_execute")
def crash(connection, cursor, statement, *args):
    if "ADD COLUMN attempts" in statement:  # revision 2, after its first three columns and revision 1's checks
        os.kill(os.getpid(), signal.SIGKILL)

from indexer.store import open_store
open_store(Path(sys.argv[1]))
"""


@both_backends
def test_an_upgrade_killed_inside_a_migration_step_leaves_the_older_schema_usable(older):
    folder, answers = older
    before = structure(raw_engine(folder))
    killed = subprocess.run([sys.executable, "-c", KILLED_INSIDE_REVISION_2, str(folder)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert structure(raw_engine(folder)) == before
    for args, answer in answers.items():  # the next command upgrades it, and it answers as it did
        after = run_cli("query", *args, "--library", str(folder), "--json", check=True).stdout
        assert results(after) == results(answer)
    assert json.loads(run_cli("status", "--library", str(folder), "--json", check=True).stdout)["schema"] == \
        SCHEMA_VERSION


@both_backends
def test_a_library_newer_than_this_release_is_refused_on_every_backend(tmp_path):
    folder = tmp_path / "lib"
    Library.open(folder, create=True).store.close()
    with raw_engine(folder).begin() as connection:
        connection.exec_driver_sql(f"UPDATE alembic_version SET version_num = '{SCHEMA_VERSION + 1:04d}'")
    before = structure(raw_engine(folder))
    for args in (("query", "a dog"), ("status", "--json"), ("index", str(tmp_path))):
        result = run_cli(*args, "--library", str(folder))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert f"schema version {SCHEMA_VERSION + 1}, newer than this clipsearch understands (schema " \
               f"{SCHEMA_VERSION})" in result.stderr
    assert structure(raw_engine(folder)) == before
