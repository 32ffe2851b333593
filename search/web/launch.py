"""`search app`: start the page's Streamlit server, print its link (with the key), open it in a browser."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import webbrowser
from html import escape
from pathlib import Path

from indexer.store.database import DATABASE_URL_ENV

from .access import NO_TOKEN_FLAG, TOKEN_ENV, new_token, page_url

PAGE = Path(__file__).with_name("page.py")
POLL_SECONDS = 0.3
# Straight to our own server: never through an http_proxy from the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class LaunchError(Exception):
    """The page cannot be started as asked; the message says why."""


def serve(library: Path, host: str, port: int, token: bool, database: str | None = None) -> int:
    """Run the page until it stops; returns the server's exit code. ``database``: the PostgreSQL URL holding the
    library's rows (else the page finds them as every command does)."""
    check_free(host, port)
    key = new_token() if token else None
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if key:
        env[TOKEN_ENV] = key  # the environment, not argv: other users can read argv with `ps`
    if database:
        env[DATABASE_URL_ENV] = database  # so is the URL, which may hold a password
    command = [sys.executable, "-m", "streamlit", "run", str(PAGE), "--server.address", host, "--server.port",
               str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
               # Streamlit's welcome names the address without the key; ours below gives the link.
               "--logger.hideWelcomeMessage", "true", "--", "--library", str(library)]
    if not key:
        command.append(NO_TOKEN_FLAG)
    # A service manager's SIGTERM ends the server and removes the private folder (its forwarding file holds the key).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="clipsearch-app-") as private:
        process = subprocess.Popen(command, env=env)
        try:
            if wait_until_serving(process, host, port):
                url = page_url(host, port, key)
                print(f"The search page: {url}", flush=True)
                print("Keep this link to yourself: its key lets anyone who has it see your pictures, until the "
                      "page stops. Ctrl-C stops it." if key else "No key (--no-token): every user of this machine "
                      "who opens this address sees your pictures. Ctrl-C stops the page.", flush=True)
                open_in_browser(url, Path(private))
            return process.wait()
        except BaseException:  # Ctrl-C or SIGTERM
            stop(process)
            raise


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def check_free(host: str, port: int) -> None:
    """Refuse at once, in one line, a port already taken: the health check below must reach our own server."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((host, port), family=family).close()
    except OSError as e:
        raise LaunchError(f"cannot serve the page on {host}:{port}: {e.strerror or e}; "
                          f"choose another --port (or --host)") from None


def wait_until_serving(process: subprocess.Popen, host: str, port: int) -> bool:
    """True once the server answers its health check; False if it exited first (it said why)."""
    health = page_url(host, port) + "_stcore/health"
    while process.poll() is None:
        try:
            with _direct.open(health, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(POLL_SECONDS)
    return False


def has_browser() -> bool:
    """A browser to open the page in: the user's $BROWSER, or a graphical one. Without a display,
    webbrowser would find only terminal browsers, which would take over this terminal."""
    return bool(os.environ.get("BROWSER") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
                or sys.platform in ("darwin", "win32"))


def open_in_browser(url: str, private: Path) -> None:
    """Open the page through a small file only this user can read that forwards to ``url``, as Jupyter
    does: a browser started with the link itself would show its key in `ps` for as long as it runs."""
    if not has_browser():
        return
    forward = private / "open.html"
    fd = os.open(forward, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={escape(url)}">'
                f'<title>clipsearch</title><a href="{escape(url)}">Open the search page</a>\n')
    # A thread: webbrowser waits for a $BROWSER command to finish. Any failure leaves the printed link.
    threading.Thread(target=_open, args=(forward.as_uri(),), daemon=True).start()


def _open(uri: str) -> None:
    try:
        webbrowser.open(uri)
    except Exception:  # no usable browser: the link printed above is enough
        pass


def stop(process: subprocess.Popen) -> None:
    """Ctrl-C or SIGTERM: Streamlit may have got it too; make sure it ends, politely first."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
