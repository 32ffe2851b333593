"""Shared fixtures: the tiny model, pictures drawn by the tests, a library folder per test."""

from __future__ import annotations

import glob
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before the test modules import torch. This sandbox sets PYTHONDONTWRITEBYTECODE=1 (CI may: it runs the same way)
# and the test environment is installed with --no-compile, so every process would compile all it imports from
# source: `import open_clip` 13.7 s against 5.1 s from bytecode (BENCHMARKS.md, "The test suite's time"). The
# tests' processes write bytecode as Python does by default: the first one compiles a module, the others read it.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
OPENCLIPART = Path("/usr/share/openclipart/png")
TINY = ("--model", "clipsearch-tiny", "--pretrained", "none")
POSTGRES_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))  # Debian's postgresql package
DATABASE_URL_ENV = "SEARCH_DATABASE_URL"


@pytest.fixture(scope="session", autouse=True)
def own_user_cache(tmp_path_factory):
    """The tests' CLI runs cache their inference choices (encoders/inference.py) here, not in the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("user-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_a_terminal_gives_it():
    """The tests' processes start with Ctrl-C (SIGINT) as a terminal gives it. A test run started as a background
    job inherits SIGINT ignored, which every process it starts would keep (Python installs its KeyboardInterrupt
    handler only over the default), and each test that presses Ctrl-C would wait in vain."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a caught signal is reset to default by exec
    yield


@pytest.fixture(scope="session")
def tiny_encoder():
    from encoders import ModelSpec, load_encoder

    return load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None))


def draw_picture(seed: int, size: tuple[int, int] = (96, 80), mode: str = "RGB") -> Image.Image:
    """A picture unlike the others: random background colour and a few random shapes."""
    rng = random.Random(seed)
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.randrange(size[0] - 10), rng.randrange(size[1] - 10)
        box = (x0, y0, x0 + rng.randrange(8, size[0] // 2), y0 + rng.randrange(8, size[1] // 2))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image.convert(mode)


def make_pictures(folder: Path, count: int, start: int = 0, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = folder / f"pic{i:03d}.{ext}"
        draw_picture(i).save(path)
        paths.append(path)
    return paths


def run_cli(*args: str, env: dict | None = None, check: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """`search ...` as a user runs it: a real subprocess of the installed console script's module."""
    command = [sys.executable, "-m", "search.cli", *args]
    full_env = {**os.environ, "PYTHONWARNINGS": "default", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)
    if check and result.returncode != 0:
        raise AssertionError(f"search {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


# `search index` in a real process, held right after its Nth batch is committed until the test releases it: a
# test that signals, kills or competes with a writer does so at a known point, never after the run has ended.
_HELD_INDEX = """
import runpy, sys, time
from pathlib import Path

import indexer.pipeline as pipeline

held, release, hold_after = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
commit, commits = pipeline.IndexRun._commit, []


def commit_then_hold(self, batch):
    commit(self, batch)
    if len(batch):
        commits.append(len(batch))
    if len(commits) == hold_after and not held.exists():
        held.touch()
        while not release.exists():
            time.sleep(0.02)


pipeline.IndexRun._commit = commit_then_hold
sys.argv = ["search", *sys.argv[4:]]
runpy.run_module("search.cli", run_name="__main__", alter_sys=True)
"""


class HeldIndex:
    """``search index ARGS`` in a subprocess that stops after its ``hold_after``-th committed batch (the library
    locked, those rows in the database, the rest not yet read) until ``release()``."""

    def __init__(self, folder: Path, *args: str, hold_after: int = 1):
        folder.mkdir(parents=True, exist_ok=True)
        self.held, self.released = folder / "held", folder / "release"
        self.process = subprocess.Popen(
            [sys.executable, "-c", _HELD_INDEX, str(self.held), str(self.released), str(hold_after), "index", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_held(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.held.exists():
            if self.process.poll() is not None:
                raise AssertionError(f"the writer ended before it was held:\n{self.process.communicate()[1]}")
            assert time.monotonic() < deadline, "the writer was never held"
            time.sleep(0.02)

    def release(self) -> None:
        self.released.touch()


def rows_committed(folder: Path) -> int:
    """Rows the library in ``folder`` holds now (0 before it exists), as another process sees them."""
    from indexer import Library
    from indexer.errors import NoLibrary

    try:
        library = Library.open(folder)
    except NoLibrary:
        return 0
    try:
        return sum(library.store.reads.counts().values())
    finally:
        library.store.close()


def library_rows(library, status: str | None = None) -> list:
    """Every row of a library (``indexer.store.PictureRow``, vectors included), in id order; only ``status`` ones
    when given."""
    rows = library.store.reads.export_rows(-1, 10**9, vectors=True)
    return [r for r in rows if status is None or r.status == status]


# -- PostgreSQL: a throwaway server for the session, a new database per test --------------------------------


def _as_postgres_user(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: as root, run them as the `postgres` user Debian's package
    makes (CI runs as root)."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster of its own on 127.0.0.1 and a free port, its data in a temporary folder, trust
    authentication for the user `clipsearch`; stopped at the end. Durability is off (fsync): tests crash clients,
    never this server. Yields the URL prefix (append a database name)."""
    if not POSTGRES_BIN:
        pytest.skip("PostgreSQL's server is not installed (apt-get install postgresql)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("running as root without runuser, so PostgreSQL's server cannot be started as another user")
    binaries = Path(POSTGRES_BIN[-1])
    # Not under pytest's own temporary folder: that one is private to this user, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="clipsearch-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", _free_port()
    subprocess.run(_as_postgres_user([str(binaries / "initdb"), "-D", str(data), "-U", "clipsearch",
                                      "--auth=trust", "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    subprocess.run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
                                      "-o", options, "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql://clipsearch@127.0.0.1:{port}/"
    finally:
        subprocess.run(_as_postgres_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


_databases = itertools.count(1)


def create_database(server: str) -> str:
    """A new, empty database on the server at ``server`` (a URL prefix); its URL."""
    import psycopg

    name = f"library_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server + "postgres", autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server + name


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A new, empty database on the session's server."""
    return create_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, monkeypatch) -> str | None:
    """Run the test against each backend: the library folder's SQLite file, then a PostgreSQL database (given to
    every library this test opens, and to the CLI it runs, by $SEARCH_DATABASE_URL). Yields the URL or None."""
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    if request.param == "sqlite":
        return None
    url = request.getfixturevalue("postgres_url")
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    return url


@pytest.fixture
def next_library(request, monkeypatch):
    """For a test that makes several libraries one after another: call it before making the next one. On
    PostgreSQL it points $SEARCH_DATABASE_URL at a new, empty database (a library is its database); on SQLite
    each library folder has its own file already."""
    def switch() -> None:
        if os.environ.get(DATABASE_URL_ENV):
            monkeypatch.setenv(DATABASE_URL_ENV, create_database(request.getfixturevalue("postgres_server")))
    return switch


# A library test that runs on both backends (conftest.backend).
both_backends = pytest.mark.usefixtures("backend")


# Many commands in one process (a process per command imports torch again each time): typer's own test runner
# calls the CLI as the console script does. The API (what the page and scripts call) opens the library last and
# answers with the error's class and message.
_COMMANDS_IN_ONE_PROCESS = """
import json, sys
from typer.testing import CliRunner
from search.cli import app
from search import SearchEngine
library, commands = sys.argv[1], json.loads(sys.argv[2])
out = {}
for name, args in commands.items():
    result = CliRunner().invoke(app, [*args, "--library", library])
    crash = result.exception is not None and not isinstance(result.exception, SystemExit)
    # surrogateescape, not click's "replace": bytes that are not UTF-8 come back exact (test_paths)
    stdout, stderr = (b.decode("utf-8", "surrogateescape") for b in (result.stdout_bytes, result.stderr_bytes))
    out[name] = [result.exit_code, stdout, stderr + (f"Traceback: {result.exception!r}\\n" * crash)]
try:
    SearchEngine(library)
    out["api"] = [0, "", ""]
except Exception as e:
    out["api"] = [2, "", f"{type(e).__name__}: {e}\\n"]
print(json.dumps(out))
"""


def run_cli_commands(library: Path, commands: dict[str, list[str]], prefix: tuple[str, ...] = (),
                     env: dict[str, str] | None = None) -> dict[str, subprocess.CompletedProcess]:
    """Each named `search` command on one library, all in one fresh process (`python *prefix -c ...`: a prefix
    may give up root's powers first). An uncaught exception shows in stderr as "Traceback: ..."; "api" is opening
    the library through SearchEngine. `env` adds variables to that one process's environment (e.g. a locale)."""
    process = subprocess.run([sys.executable, *prefix, "-c", _COMMANDS_IN_ONE_PROCESS, str(library),
                              json.dumps(commands)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                             env={**os.environ, "PYTHONWARNINGS": "default", **(env or {})})
    assert process.returncode == 0, process.stderr
    return {name: subprocess.CompletedProcess(commands.get(name, name), code, stdout, stderr)
            for name, (code, stdout, stderr) in json.loads(process.stdout).items()}


def index_as_the_cli_leaves_it(lib, encoder, roots: list[Path]) -> None:
    """Index ``roots`` into the new library ``lib`` as `search index` leaves one whose chosen path is `onnx`: both
    towers exported beside it, so that CLI commands and the page answer texts and outside pictures without
    torch (a process that imports it costs 10-25 s of CPU here; the tests that need one run it themselves)."""
    pytest.importorskip("onnxruntime", reason="the ONNX towers need onnxruntime (and onnx to export)")
    pytest.importorskip("onnx")
    from encoders.inference import image_encoder
    from indexer import index_folders
    from search import SearchEngine

    index_folders(lib, image_encoder(encoder, None, "onnx", lib.folder), roots)
    assert SearchEngine(lib.folder, encoder=encoder).prepare_text_tower()


_REPORTING_IMPORTS = """import sys
from search.cli import main
expected, sys.argv = int(sys.argv[1]), ['search', *sys.argv[2:]]
try:
    main()
except SystemExit as e:
    assert (e.code or 0) == expected, e.code
print(sorted(m for m in ('torch', 'open_clip', 'timm') if m in sys.modules))
"""


def run_cli_reporting_imports(*args: str, exit_code: int = 0) -> tuple[str, str]:
    """`search ARGS` in a fresh process: what it printed (its errors, when it is to exit with a nonzero
    ``exit_code``), and which of torch, open_clip and timm it imported."""
    result = subprocess.run([sys.executable, "-c", _REPORTING_IMPORTS, str(exit_code), *args], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    output, _, imported = result.stdout.rstrip("\n").rpartition("\n")
    return (output if exit_code == 0 else result.stderr), imported
