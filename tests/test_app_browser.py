"""The search page in a real browser: the app as a subprocess, Debian's headless Chromium driven by Playwright.

The tiny model has random weights, so the deterministic checks are picture queries: an
upload of a library picture, and "more like this", each find that picture first. The page
opens only from the link with its key, which the tests read from the server's output as a
user reads it from the terminal.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (Debian package `chromium`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

from conftest import index_as_the_cli_leaves_it  # noqa: E402

from encoders import ModelSpec, load_encoder  # noqa: E402
from indexer import Library  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
START_TIMEOUT = 90  # seconds for the server to answer
UI_TIMEOUT = 60_000  # milliseconds for the page to show something
COLOURS = ["crimson", "forestgreen", "royalblue", "darkorange", "indigo", "gold", "teal", "hotpink"]
NEEDS_KEY = "This page opens only from the link with its key"


def make_pictures(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (180, 140), "white")
        draw = ImageDraw.Draw(image)
        box = [20 + i * 3, 15, 150, 125]
        if i % 3 == 0:
            draw.ellipse(box, fill=colour)
        elif i % 3 == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.pieslice(box, 0, 270, fill=colour)
        draw.line([(0, 10 * i), (180, 140 - 10 * i)], fill="black", width=4)
        path = folder / f"{i:02d}-{colour}.{'jpg' if i % 2 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("browserlib")
    pictures = make_pictures(root / "pictures")
    lib = Library.open(root / "library", create=True)
    index_as_the_cli_leaves_it(lib, load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None)),
                               [root / "pictures"])
    return {"dir": root / "library", "pictures": pictures,
            "ids": {p: lib.store.reads.picture_by_path(str(p)).id for p in pictures}}


def start_server(command: list[str], port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("SEARCH_LIBRARY", "SEARCH_APP_TOKEN", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if get(f"http://127.0.0.1:{port}/_stcore/health")[0] == 200:
                return process
        except OSError:
            pass
        time.sleep(0.3)
    stop(process)
    pytest.fail(f"the app did not answer within {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """End the server and anything it started (`search app` runs streamlit as a child): its own session."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def printed_link(log: Path, pattern: str) -> str:
    """The link with the key, as the server printed it for the user."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.3)
    pytest.fail(f"no link printed within {START_TIMEOUT}s:\n{log.read_text()[-3000:]}")


def shows_only_the_note(page, url: str) -> None:
    """Without the key: one line, no library, no pictures, nothing to search with."""
    page.goto(url)
    sync_api.expect(page.get_by_text(NEEDS_KEY)).to_be_visible(timeout=UI_TIMEOUT)
    assert page.locator("img").count() == 0 and page.locator("input").count() == 0
    body = page.locator("body").inner_text()
    assert "pictures" not in body.lower() and "library" not in body.lower()


def first_card(page):
    return page.locator('[class*="st-key-result-"]').first


def click_when_settled(locator) -> None:
    """Click once Streamlit has finished replacing the element (mid-rerun, old and new can both be there)."""
    sync_api.expect(locator).to_have_count(1, timeout=UI_TIMEOUT)
    locator.click()


def test_search_in_a_real_browser(library, browser, tmp_path):
    port = free_port()
    server = start_server([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.port",
                           str(port), "--server.headless", "true", "--server.fileWatcherType", "none", "--",
                           "--library", str(library["dir"])], port, tmp_path / "server.log")
    expect = sync_api.expect
    try:
        # `streamlit run` without `search app`: the first visit gets the note, the terminal the link.
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        shows_only_the_note(page, f"http://127.0.0.1:{port}/")
        link = printed_link(tmp_path / "server.log", rf"(http://127\.0\.0\.1:{port}/\?token=[\w-]+)")
        shows_only_the_note(page, link[:-3])  # a wrong key
        page.goto(link)
        box = page.locator('input[aria-label="Search your pictures"]')
        box.wait_for(timeout=UI_TIMEOUT)
        expect(page.get_by_text(f"{len(library['pictures'])} pictures", exact=True)).to_be_visible()

        # Words: a grid of every picture, ranked (the random model's order means nothing).
        box.fill("a red circle")
        box.press("Enter")
        cards = page.locator('[class*="st-key-result-"]')
        expect(cards).to_have_count(len(library["pictures"]), timeout=UI_TIMEOUT)
        expect(cards.first.locator("img")).to_be_visible()
        assert cards.first.locator("img").evaluate("img => img.naturalWidth") > 0  # the thumbnail was served

        # A picture from the library, uploaded: it comes back first.
        target = library["pictures"][3]
        box.fill("")
        box.press("Enter")
        page.locator('input[type="file"]').set_input_files(str(target))
        expect(first_card(page)).to_contain_text(target.name, timeout=UI_TIMEOUT)
        expect(first_card(page)).to_contain_text("1.000")

        # More like this, under another result: that picture comes first, the upload is gone.
        other = library["pictures"][6]
        click_when_settled(page.locator(f'.st-key-more-{library["ids"][other]} button'))
        expect(page.get_by_text(f"Pictures like {other.name}")).to_be_visible(timeout=UI_TIMEOUT)
        expect(first_card(page)).to_contain_text(other.name, timeout=UI_TIMEOUT)
        expect(first_card(page)).to_contain_text("1.000")

        # View: the picture large, with its path.
        click_when_settled(first_card(page).get_by_role("button", name="View"))
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text(str(other), timeout=UI_TIMEOUT)
        expect(dialog.locator("img")).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)

        shot = Path(os.environ.get("CLIPSEARCH_SCREENSHOT_DIR", tmp_path)) / "app-browser.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")

        # Only library rows are served: no file path reaches the disk through the server.
        for url in ("/etc/passwd", "/app/static/../../../../etc/passwd", "/media/..%2F..%2Fetc%2Fpasswd",
                    f"/media/{target}", "/_stcore/../../etc/passwd"):
            status, body = get(f"http://127.0.0.1:{port}{url}")
            assert b"root:" not in body and target.read_bytes()[:64] not in body, url
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def search_app(library, port: int, log: Path, *options: str) -> subprocess.Popen:
    search = shutil.which("search", path=str(Path(sys.executable).parent)) or "search"
    return start_server([search, "app", "--library", str(library["dir"]), "--port", str(port), *options], port, log)


def not_on_other_addresses(port: int) -> None:
    with socket.socket() as s:
        addresses = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        outside = next((a for a in addresses if not a.startswith("127.")), None)
        if outside:
            assert s.connect_ex((outside, port)) != 0


def the_page_searches(page, library) -> None:
    """The library is shown read-only (no field to open another), and an upload finds itself first."""
    sync_api.expect(page.get_by_text(str(library["dir"]), exact=True)).to_be_visible(timeout=UI_TIMEOUT)
    assert page.locator('input[aria-label="Library folder"]').count() == 0
    target = library["pictures"][1]
    page.locator('input[type="file"]').set_input_files(str(target))
    sync_api.expect(first_card(page)).to_contain_text(target.name, timeout=UI_TIMEOUT)


def test_search_app_command_serves_the_library_on_localhost(library, browser, tmp_path):
    """`search app --library DIR --port N`: the CLI's launcher, the same page, bound to 127.0.0.1, behind the key
    of the link it prints."""
    port = free_port()
    server = search_app(library, port, tmp_path / "server.log")
    try:
        not_on_other_addresses(port)
        link = printed_link(tmp_path / "server.log", r"The search page: (http://\S+)")
        assert link.startswith(f"http://127.0.0.1:{port}/?token=")
        page = browser.new_page()
        shows_only_the_note(page, f"http://127.0.0.1:{port}/")
        shows_only_the_note(page, f"http://127.0.0.1:{port}/?token=guess")
        page.goto(link)
        the_page_searches(page, library)
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_search_app_without_its_key(library, browser, tmp_path):
    """`search app --no-token`: the bare address opens the page (this machine only)."""
    port = free_port()
    server = search_app(library, port, tmp_path / "server.log", "--no-token")
    try:
        not_on_other_addresses(port)
        link = printed_link(tmp_path / "server.log", r"The search page: (http://\S+)")
        assert link == f"http://127.0.0.1:{port}/"
        page = browser.new_page()
        page.goto(link)
        the_page_searches(page, library)
    finally:
        stop(server)
    assert "Traceback" not in (tmp_path / "server.log").read_text()
