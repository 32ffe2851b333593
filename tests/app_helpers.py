"""What the search page's tests share: pictures drawn here, the page under AppTest with its key, reading it back."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"
COLOURS = ["red", "green", "blue", "orange", "purple", "gold", "cyan", "magenta", "brown", "black", "pink", "gray"]
TIMEOUT = 90  # the first run imports torch and open_clip
TEST_KEY = "key-made-by-the-tests"


def make_pictures(folder: Path, colours=COLOURS) -> list[Path]:
    """Distinct coloured shapes, JPEG and PNG, in two sub-folders."""
    paths = []
    for i, colour in enumerate(colours):
        image = Image.new("RGB", (160 + 8 * i, 128), "white")
        draw = ImageDraw.Draw(image)
        shape = i % 3
        if shape == 0:
            draw.ellipse([24, 14, 124, 114], fill=colour)
        elif shape == 1:
            draw.rectangle([24, 14, 124, 114], fill=colour)
        else:
            draw.polygon([(74, 8), (16, 120), (132, 120)], fill=colour)
        draw.line([(0, 4 * i), (image.width, 127 - 4 * i)], fill="black", width=3)
        sub = folder / ("shapes" if i < 8 else "more")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:02d}-{colour}.{'jpg' if i % 2 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


def page_test(monkeypatch, library_dir: Path, key: str | None = TEST_KEY) -> AppTest:
    """The page as `search app` starts it (the server's key in its environment), not yet run."""
    from search.web.access import TOKEN_ENV

    monkeypatch.setenv("SEARCH_LIBRARY", str(library_dir))
    monkeypatch.setenv(TOKEN_ENV, TEST_KEY)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if key is not None:
        at.query_params["token"] = key
    return at


def open_app(monkeypatch, library_dir: Path) -> AppTest:
    """The page opened from its link."""
    at = page_test(monkeypatch, library_dir)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def result_names(at: AppTest) -> list[str]:
    """File names of the grid, in order (each card has "**score** · name")."""
    return [m.value.split(" · ", 1)[1] for m in at.markdown if m.value.startswith("**") and " · " in m.value]
