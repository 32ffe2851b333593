"""Starting the page: `search app` (its key, its link, the browser) and Streamlit run directly, all on localhost.

Real processes: the launcher and Streamlit as a user starts them, their sockets and command
lines read with psutil, a stand-in browser ($BROWSER) that records what it was asked to open.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
psutil = pytest.importorskip("psutil")

from conftest import ROOT, run_cli  # noqa: E402

from indexer import Library  # noqa: E402
from search.web.access import TOKEN_ENV  # noqa: E402

START_TIMEOUT = 90
LINK = re.compile(r"The search page: (http://127\.0\.0\.1:\d+/(?:\?token=([\w-]+))?)")
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(port: int) -> int | None:
    try:
        with _direct.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
            return answer.status
    except OSError:
        return None


class Server:
    """A server process started the way a user would, its output collected as it comes."""

    def __init__(self, command: list[str], env: dict, cwd: Path):
        self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, check, what: str):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            assert self.process.poll() is None, f"exited {self.process.returncode} before {what}:\n{self.output()}"
            time.sleep(0.2)
        pytest.fail(f"no {what} within {START_TIMEOUT}s:\n{self.output()}")

    def link(self) -> re.Match:
        return self.wait_for(lambda: LINK.search(self.output()), "link printed")

    def family(self) -> list[dict]:
        """The launcher and its descendants still running: command line, environment, listening addresses."""
        try:
            me = psutil.Process(self.process.pid)
            processes = [me, *me.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        found = []
        for p in processes:
            try:  # a helper may exit (or wait as a zombie) meanwhile
                listening = {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
                found.append({"cmdline": p.cmdline(), "environ": p.environ(), "listening": listening})
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return found

    def listening(self) -> set[str]:
        return set().union(*(p["listening"] for p in self.family()))

    def interrupt(self) -> int:
        """Ctrl-C in the terminal: the whole foreground group gets SIGINT."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)


def user_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    for name in (TOKEN_ENV, "SEARCH_LIBRARY", "DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        if name not in extra:
            env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launch") / "library"
    Library.open(folder, create=True)  # an empty library is enough: these tests never search
    return folder


@pytest.fixture
def browser(tmp_path):
    """A stand-in for the user's browser: records its arguments, what the opened file says, and whether the
    server answered at that moment."""
    record = tmp_path / "browser.txt"
    script = tmp_path / "fake-browser"
    script.write_text(f"""#!{sys.executable}
import re, sys, urllib.parse, urllib.request
uri = sys.argv[1]
path = urllib.parse.unquote(urllib.parse.urlparse(uri).path)
text = open(path).read()
page = re.search(r'url=([^"]+)"', text).group(1).replace("&amp;", "&")
port = urllib.parse.urlparse(page).port
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
status = opener.open(f"http://127.0.0.1:{{port}}/_stcore/health", timeout=5).status
open({str(record)!r}, "w").write("\\n".join([repr(sys.argv), path, page, str(status)]))
""")
    script.chmod(0o755)
    return {"env": str(script), "record": record}


def test_search_app_prints_its_key_and_opens_the_browser_without_showing_it(library, browser, tmp_path):
    port = free_port()
    server = Server([sys.executable, "-m", "search.cli", "app", "--library", str(library), "--port", str(port)],
                    user_env(BROWSER=browser["env"]), ROOT)
    opened = None
    try:
        link = server.link()
        url, key = link.group(1), link.group(2)
        assert key and len(key) >= 40 and url == f"http://127.0.0.1:{port}/?token={key}"
        assert health(port) == 200  # the link is printed once the page answers
        assert server.listening() == {"127.0.0.1"}

        processes = server.family()
        for p in processes:  # nobody can read the key in `ps`
            assert not any(key in arg for arg in p["cmdline"]), p["cmdline"]
        streamlit = next(p for p in processes if "streamlit" in p["cmdline"])
        assert streamlit["environ"][TOKEN_ENV] == key

        server.wait_for(browser["record"].exists, "browser opened")
        argv, opened, page, status = browser["record"].read_text().split("\n")
        assert key not in argv and argv.count("file://") == 1  # the browser got a file, not the link
        assert page == url and status == "200"
        assert stat.S_IMODE(os.stat(opened).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(opened).parent).st_mode) == 0o700
    finally:
        code = server.interrupt()
    assert code == 130 and "Traceback" not in server.output(), server.output()
    assert opened and not Path(opened).exists()  # the forwarding file goes with the launcher


def test_a_service_managers_sigterm_ends_the_page_and_removes_the_key_file(library, browser):
    """SIGTERM to the launcher alone (as systemd or `kill` sends it): Streamlit stops too, the private folder with
    the forwarding file (it holds the key) is removed, exit code 128 + 15, no traceback."""
    port = free_port()
    server = Server([sys.executable, "-m", "search.cli", "app", "--library", str(library), "--port", str(port)],
                    user_env(BROWSER=browser["env"]), ROOT)
    try:
        server.link()
        server.wait_for(browser["record"].exists, "browser opened")
        opened = Path(browser["record"].read_text().split("\n")[1])
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert opened.exists() and children
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=60)
    finally:
        if server.process.poll() is None:
            server.interrupt()
    assert code == 143 and "Traceback" not in server.output(), server.output()
    assert not opened.parent.exists()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert health(port) is None


def test_search_app_no_token(library, tmp_path):
    port = free_port()
    server = Server([sys.executable, "-m", "search.cli", "app", "--library", str(library), "--port", str(port),
                     "--no-token"], user_env(), ROOT)
    try:
        link = server.link()
        assert link.group(1) == f"http://127.0.0.1:{port}/" and link.group(2) is None
        assert "No key (--no-token): every user of this machine who opens this address sees your pictures" \
            in server.output()
        assert not any(TOKEN_ENV in p["environ"] for p in server.family())
        assert server.listening() == {"127.0.0.1"}
    finally:
        server.interrupt()


def test_help_says_who_sees_the_page_without_its_key():
    out = re.sub(r"[\s│╭╮╰╯─]+", " ", run_cli("app", "--help", env={"COLUMNS": "200"}).stdout)
    assert "--no-token" in out and "every user of this machine who opens the address" in out


@pytest.mark.parametrize("host", ["0.0.0.0", "::", ""])
def test_no_token_off_loopback_is_refused_before_starting(library, host):
    result = run_cli("app", "--library", str(library), "--no-token", "--host", host, "--port", str(free_port()))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --no-token serves the page to whoever reaches ")
    assert result.stderr.count("\n") == 1


def test_a_port_in_use_is_one_line(library):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("app", "--library", str(library), "--port", str(port))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: cannot serve the page on 127.0.0.1:{port}: ")
    assert result.stderr.endswith("choose another --port (or --host)\n") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("script", ["search/web/page.py", "app.py"])
def test_streamlit_run_directly_listens_on_localhost(library, tmp_path, script):
    """Bypassing `search app` (and started from another folder, so no project config applies): the config beside
    the script still binds 127.0.0.1."""
    port = free_port()
    server = Server([sys.executable, "-m", "streamlit", "run", str(ROOT / script), "--server.port", str(port),
                     "--server.headless", "true", "--", "--library", str(library)],
                    user_env(PYTHONPATH=str(ROOT)), tmp_path)
    try:
        server.wait_for(lambda: health(port) == 200, "health answer")
        assert server.listening() == {"127.0.0.1"}
    finally:
        server.interrupt()
