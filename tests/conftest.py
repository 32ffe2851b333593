"""Shared fixtures: the tiny model, pictures drawn by the tests, a library folder per test."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
OPENCLIPART = Path("/usr/share/openclipart/png")
TINY = ("--model", "clipsearch-tiny", "--pretrained", "none")


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
    out[name] = [result.exit_code, result.stdout, result.stderr + (f"Traceback: {result.exception!r}\\n" * crash)]
try:
    SearchEngine(library)
    out["api"] = [0, "", ""]
except Exception as e:
    out["api"] = [2, "", f"{type(e).__name__}: {e}\\n"]
print(json.dumps(out))
"""


def run_cli_commands(library: Path, commands: dict[str, list[str]],
                     prefix: tuple[str, ...] = ()) -> dict[str, subprocess.CompletedProcess]:
    """Each named `search` command on one library, all in one fresh process (`python *prefix -c ...`: a prefix
    may give up root's powers first). An uncaught exception shows in stderr as "Traceback: ..."; "api" is opening
    the library through SearchEngine."""
    process = subprocess.run([sys.executable, *prefix, "-c", _COMMANDS_IN_ONE_PROCESS, str(library),
                              json.dumps(commands)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                             env={**os.environ, "PYTHONWARNINGS": "default"})
    assert process.returncode == 0, process.stderr
    return {name: subprocess.CompletedProcess(commands.get(name, name), code, stdout, stderr)
            for name, (code, stdout, stderr) in json.loads(process.stdout).items()}
