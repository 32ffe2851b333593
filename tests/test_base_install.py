"""The install a user makes: `pip install -e .` alone (no extras, no test tools), every used-by path walked
as a newcomer would, each a real subprocess of that environment's `search`, on real pictures and a real corpus.

The test suite itself runs from `.[test]`, which carries more packages than a user has; a path that
works only there (say, a trainer that needs a test tool) would pass every other test and fail every
user. So this builds a second, base-only environment (minutes the first time; reused while
pyproject.toml and setup.py stay the same) and checks that it truly lacks the test extras.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import OPENCLIPART, ROOT, SHARED_DATA

EMOJI = SHARED_DATA / "emoji-google"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not OPENCLIPART.is_dir(), reason="openclipart-png not installed (apt-get install "
                       "openclipart-png)"),
    pytest.mark.skipif(not (EMOJI / "captions.csv").is_file(), reason=f"no {EMOJI}/captions.csv beside the checkout"),
]
TEST_ONLY = ("pytest", "playwright", "psutil", "pillow_heif")  # the `test` extra: a user's install has none
TINY = ("--model", "clipsearch-tiny", "--pretrained", "none")


def environment_folder() -> Path:
    """One base environment per checkout and dependency list (an editable install points at its checkout)."""
    stamp = hashlib.sha256(str(ROOT).encode() + (ROOT / "pyproject.toml").read_bytes()
                           + (ROOT / "setup.py").read_bytes()).hexdigest()[:16]
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"clipsearch-base-env-{stamp}"


@pytest.fixture(scope="module")
def base_env() -> Path:
    folder = environment_folder()
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        # --no-compile: byte-compiling every installed module (torch's thousands) is half the install's time here;
        # the commands below compile what they import, as any Python does.
        install = subprocess.run([str(folder / "bin" / "pip"), "install", "-q", "--no-compile", "-e", str(ROOT)],
                                 capture_output=True, text=True)
        assert install.returncode == 0, f"pip install -e . failed:\n{install.stdout[-3000:]}{install.stderr[-3000:]}"
        (folder / ".complete").touch()
    probe = subprocess.run([str(folder / "bin" / "python"), "-c",
                            "import importlib.util as u, sys; print(*[m for m in sys.argv[1:] if u.find_spec(m)])",
                            *TEST_ONLY], capture_output=True, text=True, check=True)
    assert probe.stdout.split() == [], f"the base environment has test-only packages: {probe.stdout}"
    return folder


class User:
    """Runs `search ...` from the base environment, as a user's shell would, and fails on any traceback."""

    def __init__(self, env: Path, home: Path):
        self.env = {**os.environ, "PATH": f"{env / 'bin'}:{os.environ['PATH']}", "HOME": str(home),
                    "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
        self.env.pop("VIRTUAL_ENV", None)
        self.cwd = home

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(["search", *map(str, args)], capture_output=True, text=True, env=self.env,
                                cwd=self.cwd, timeout=timeout)
        command = "search " + " ".join(map(str, args))
        assert "Traceback" not in result.stderr + result.stdout, f"{command} printed a traceback:\n{result.stderr}"
        assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr[-3000:]}"
        return result

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "--json").stdout)


def clipart(folder: Path, count: int = 60) -> list[Path]:
    """Every n-th picture of Debian's openclipart-png: many sizes, modes and subjects."""
    found = sorted(OPENCLIPART.rglob("*.png"))
    picked = found[:: max(1, len(found) // count)][:count]
    for path in picked:
        target = folder / path.relative_to(OPENCLIPART)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    return [folder / p.relative_to(OPENCLIPART) for p in picked]


def emoji_corpora(folder: Path, count: int = 192) -> dict[str, Path]:
    """The same emoji-google pictures and captions in every corpus format `search train` reads."""
    with open(EMOJI / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:: 3][:count]
    images = folder / "folder"
    images.mkdir(parents=True)
    for row in rows:
        name = Path(row["filepath"]).name
        shutil.copy(EMOJI / row["filepath"], images / name)
        (images / name).with_suffix(".txt").write_text(row["caption"] + "\n")
    table = folder / "captions.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption", "category"])
        writer.writerows([f"folder/{Path(r['filepath']).name}", r["caption"], r["category"]] for r in rows)
    tsv = folder / "captions.tsv"
    tsv.write_text("filepath\tcaption\n" + "".join(f"folder/{Path(r['filepath']).name}\t{r['caption']}\n"
                                                   for r in rows), encoding="utf-8")
    jsonl = folder / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"filepath": f"folder/{Path(r['filepath']).name}", "caption": r["caption"]})
                             + "\n" for r in rows), encoding="utf-8")
    shards = folder / "shards"
    shards.mkdir()
    for shard in range(2):
        with tarfile.open(shards / f"{shard:03d}.tar", "w") as tar:
            for i, row in enumerate(rows[shard::2]):
                key = f"{shard:03d}{i:05d}"
                tar.add(images / Path(row["filepath"]).name, arcname=f"{key}.png")
                caption = row["caption"].encode()
                info = tarfile.TarInfo(f"{key}.txt")
                info.size = len(caption)
                tar.addfile(info, io.BytesIO(caption))
    return {"csv": table, "tsv": tsv, "jsonl": jsonl, "folder": images,
            "shards": Path(f"{shards}/{{000..001}}.tar")}


def serve_page(user: User, library: Path) -> None:
    """`search app` answers its health endpoint and its page, then stops with the terminal's Ctrl-C."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen(["search", "app", "--library", str(library), "--port", str(port)], env=user.env,
                           cwd=user.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert app.poll() is None, f"search app exited {app.returncode}:\n{app.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    assert r.read() == b"ok"
                break
            except OSError:
                assert time.monotonic() < deadline, "search app never answered its health endpoint"
                time.sleep(1)
    finally:
        os.killpg(app.pid, signal.SIGINT)
        output = app.communicate(timeout=60)[0]
    assert "Traceback" not in output, output


def test_every_used_by_path_from_the_base_install(base_env, tmp_path):
    user = User(base_env, tmp_path)
    pictures = clipart(tmp_path / "Pictures")
    library = tmp_path / "library"

    # index, status, queries by words and by picture
    user("index", tmp_path / "Pictures", "--library", library, *TINY)
    status = user.json("status", "--library", library, "--failed")
    assert status["pictures"] + status["failed"] == len(pictures) and status["pictures"] > 0.9 * len(pictures)
    assert user.json("query", "a red star", "--library", library, "--top", "5")["results"]
    first = user.json("query", "--image", pictures[0], "--library", library, "--top", "3")["results"][0]
    assert first["path"] == str(pictures[0])

    # the library tools
    assert user.json("duplicates", "--library", library)["threshold"] == 0.95
    assert user.json("tag", "--labels", "animal,building,plant", "--library", library)["classified"] > 0
    assert json.loads(user("export", "--library", library).stdout)["pictures"]

    # the search page
    serve_page(user, library)

    # retrain on a captioned corpus in every format, then evaluate, index and re-index with the result. Two runs
    # read every format (each reader's behaviour is tested in-process, tests/test_train.py; a train process costs
    # 15-25 s of imports alone); what only this test catches is a reader needing a test-only package. Tar shards
    # are streamed and must come alone: they validate the second run.
    corpora = emoji_corpora(tmp_path / "corpus")
    runs = {"csv": ["--data", corpora["csv"], "--val-fraction", "0.25", "--label-column", "category"],
            "mixed": [*(arg for kind in ("tsv", "jsonl", "folder") for arg in ("--data", corpora[kind])),
                      "--val-data", corpora["shards"]]}
    for kind, data in runs.items():
        run = tmp_path / "runs" / kind
        user("train", *data, *TINY[:2], "--epochs", "1", "--batch-size", "32", "--output", run, "--no-progress")
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] >= 1 and (run / "model" / "open_clip_model.safetensors").is_file(), kind
        assert (run / "metrics.jsonl").stat().st_size > 0 and list(run.glob("checkpoints/*.pt")), kind
        assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kind
        assert list((run / "tensorboard").glob("events.out.tfevents.*")), kind
    model = tmp_path / "runs" / "csv" / "model"
    scores = user.json("eval", "--checkpoint", model, "--data", corpora["csv"], "--label-column", "category")
    assert 0 <= scores["text_to_image"]["recall@10"] <= 1 and "zero_shot" in scores

    trained = tmp_path / "trained-library"
    user("index", tmp_path / "Pictures", "--library", trained, "--checkpoint", model)
    assert user.json("query", "a red star", "--library", trained)["results"]
    moved = user.json("reindex", "--library", library, "--checkpoint", model)
    assert moved["pictures_after"] == status["pictures"] and moved["tags_kept"] > 0
    assert user.json("status", "--library", library)["model"]["weights"] == f"checkpoint:{model}"
    assert user.json("query", "a red star", "--library", library)["results"]
    user("remove", tmp_path / "Pictures", "--library", library)
