"""Make docs/screenshot.png: the search page over Debian's openclipart food pictures, "more like this" on an apple.

    python docs/make_screenshot.py [--model clipsearch-tiny --pretrained none]

Needs the test tools (Playwright) and Debian's `chromium` and `openclipart-png`. The library is built in a
temporary folder with the model given (the tiny one by default: random weights, so text queries mean nothing,
but "more like this" finds the near-copies of a picture, which is what the screenshot shows).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
PICTURES = Path("/usr/share/openclipart/png/food")
TARGET = "apple_bitten_dan_gerhard_01.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(port: int, server: subprocess.Popen) -> None:
    for _ in range(300):
        if server.poll() is not None:
            sys.exit(f"the app exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    sys.exit("the app did not answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clipsearch-tiny")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "screenshot.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        library = Path(work) / "library"
        subprocess.run([sys.executable, "-m", "search.cli", "index", str(PICTURES), "--library", str(library),
                        "--model", args.model, "--pretrained", args.pretrained], cwd=REPO, check=True)
        port = free_port()
        headless = {k: v for k, v in os.environ.items() if k not in ("BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
        server = subprocess.Popen([sys.executable, "-m", "search.cli", "app", "--library", str(library), "--no-token",
                                   "--port", str(port)], cwd=REPO, start_new_session=True, env=headless,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_health(port, server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                     args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator('input[type="file"]').set_input_files(str(next(PICTURES.rglob(TARGET))))
                card = page.locator('[class*="st-key-result-"]').first
                expect(card).to_contain_text(TARGET, timeout=120_000)
                card.locator('[class*="st-key-more-"] button').click()
                expect(page.get_by_text(f"Pictures like {TARGET}")).to_be_visible(timeout=120_000)
                page.wait_for_timeout(3000)  # the thumbnails finish loading
                page.screenshot(path=str(args.output))
                browser.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(args.output)


if __name__ == "__main__":
    main()
