"""Issue 14, paths: names are bytes end to end. Folder ranges hold exactly the paths inside a folder
whatever bytes names hold (0xff included); JSON is valid UTF-8 under any locale and gives every name's
exact bytes back; --print0 gives raw bytes; a terminal sees control characters escaped, never acting.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, draw_picture, index_as_the_cli_leaves_it, library_rows, run_cli, run_cli_commands
from input_helpers import assert_refused, snapshot

from indexer import Library, index_folders
from indexer.store import folder_range
from search import SearchEngine
from search.filters import Filters
from search.output import shown

pytestmark = pytest.mark.timeout(600)

STRICT = {"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0"}
# Names a hostile or unlucky user has: a first byte 0xff (Latin-1 "ÿ"), a newline, escape sequences
# (ESC and the one-byte C1 CSI), a right-to-left override, and plain ones around them.
PICS = [b"plain.png", "café 日本.png".encode(), b"\xffname.png", b"new\nline.png", b"\x1b[31mred.png",
        "\u009b7mcsi.png".encode(), "evil\u202egnp.exe.png".encode(), b"sub/a.png", b"sub/b.png", b"sub.d/c.png",
        b"sub\xff/d.png", b"sub0/e.png"]
MORE = [b"other.png", b"\xff/f.png", b"\xff/\xfe\xff.png"]  # in a root whose own name ends with 0xff


def fs(path: bytes) -> str:
    return os.fsdecode(path)


@pytest.fixture(scope="module")
def named(tmp_path_factory, tiny_encoder):
    """A library of two roots (one whose own name is not UTF-8) holding every kind of name, and the bytes
    of every picture path."""
    base = os.fsencode(tmp_path_factory.mktemp("paths"))
    roots = [base + b"/pics", base + b"/more\xff"]
    paths = set()
    for i, (root, name) in enumerate([(roots[0], n) for n in PICS] + [(roots[1], n) for n in MORE]):
        path = root + b"/" + name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        draw_picture(200 + i).save(fs(path), format="PNG")
        paths.add(path)
    lib = Library.open(Path(fs(base + b"/lib")), create=True)
    index_as_the_cli_leaves_it(lib, tiny_encoder, [Path(fs(r)) for r in roots])
    return lib, roots, paths


def library_args(lib):
    return ("--library", str(lib.folder))


def all_strings(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)
    elif isinstance(value, str):
        yield value


def exact_paths(value) -> list[bytes]:
    """Every "path" in a JSON answer, as bytes: from path_base64 where given, else the text's UTF-8."""
    if isinstance(value, list):
        return [p for item in value for p in exact_paths(item)]
    if not isinstance(value, dict):
        return []
    found = [base64.b64decode(value["path_base64"]) if "path_base64" in value else value["path"].encode()] \
        if "path" in value else []
    return found + [p for item in value.values() for p in exact_paths(item)]


def strict_json(result: subprocess.CompletedProcess | bytes):
    """The JSON a command printed, checked: exit 0, UTF-8, every string valid Unicode."""
    if isinstance(result, subprocess.CompletedProcess):
        assert result.returncode == 0, result.stderr[-2000:]
        result = result.stdout
    value = json.loads(result.decode("utf-8"))  # strict: any other byte sequence fails here
    for text in all_strings(value):
        text.encode("utf-8")  # no lone surrogates
    return value


def run_bytes(*args, env=None) -> subprocess.CompletedProcess:
    """`search ...` with its output kept as bytes, under a strict C locale unless told otherwise."""
    command = [sys.executable, "-m", "search.cli", *[a if isinstance(a, bytes) else str(a) for a in args]]
    return subprocess.run(command, capture_output=True, cwd=ROOT, env={**os.environ, **STRICT, **(env or {})},
                          timeout=300)


def run_bytes_together(lib, commands: dict[str, tuple]) -> dict[str, subprocess.CompletedProcess]:
    """Each named `search ...` on the library, all in one process under the same strict C locale as run_bytes (whose
    PYTHONIOENCODING makes stdout the same UTF-8 strict stream typer's runner gives), output kept as bytes."""
    commands = {name: [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args]
                for name, args in commands.items()}
    answers = run_cli_commands(lib.folder, commands, env=STRICT)
    return {name: subprocess.CompletedProcess(r.args, r.returncode, *(os.fsencode(t) for t in (r.stdout, r.stderr)))
            for name, r in answers.items() if name != "api"}


def test_reindexing_roots_with_any_bytes_in_names(named, tiny_encoder):
    """A name beginning with byte 0xff made every later index of its root fail (UNIQUE constraint)."""
    lib, roots, paths = named
    before = snapshot(lib.folder)
    summary = index_folders(lib, tiny_encoder, [Path(fs(r)) for r in roots])
    assert (summary.added, summary.removed, summary.unchanged) == (0, 0, len(paths))
    assert {os.fsencode(r.path) for r in library_rows(lib)} == paths
    assert snapshot(lib.folder)[0]["pictures"] == before[0]["pictures"]


def test_folder_range_holds_exactly_the_paths_inside():
    rng = random.Random(14)
    name_bytes = [b for b in range(1, 256) if b != ord("/")]
    for _ in range(300):
        folder = b"/" + bytes(rng.choice(name_bytes) for _ in range(rng.randrange(1, 6)))
        low, high = folder_range(fs(folder))
        assert (low, high) == folder_range(fs(folder + b"/"))
        for _ in range(20):
            tail = bytes(rng.choice(name_bytes + [ord("/")]) for _ in range(rng.randrange(0, 8)))
            inside = folder + b"/" + tail
            beside = folder + bytes([rng.choice(name_bytes)]) + tail  # a sibling sharing the prefix
            assert low <= inside < high and not low <= beside < high and not low <= folder < high
    assert folder_range("/") == (b"/", b"0")


@pytest.mark.parametrize("folder, expected", [
    (b"pics/sub", [b"pics/sub/a.png", b"pics/sub/b.png"]),
    (b"pics/sub\xff", [b"pics/sub\xff/d.png"]),
    (b"more\xff/\xff", [b"more\xff/\xff/f.png", b"more\xff/\xff/\xfe\xff.png"]),
    (b"pics", None),  # everything in the root
])
def test_under_finds_exactly_the_folder_on_every_path(named, tiny_encoder, folder, expected):
    lib, roots, paths = named
    base = os.path.dirname(roots[0])
    under = base + b"/" + folder
    want = sorted(p for p in paths if p.startswith(under + b"/"))
    if expected is not None:
        assert want == sorted(base + b"/" + e for e in expected)
    before = snapshot(lib.folder)
    shown = run_bytes("query", "a picture", "--under", under, "--top", "50", "--print0", *library_args(lib))
    assert shown.returncode == 0, shown.stderr
    assert sorted(shown.stdout.split(b"\0")[:-1]) == want
    engine = SearchEngine(lib.folder, encoder=tiny_encoder)
    assert sorted(os.fsencode(r.path) for r in engine.query("a picture", under=fs(under), top_k=50)) == want
    ids = lib.store.reads.matching_ids(Filters.make(under=fs(under)))
    assert sorted(os.fsencode(r.path) for r in lib.store.reads.pictures(ids).values()) == want
    assert snapshot(lib.folder) == before


def test_remove_forgets_exactly_the_folder(named, tmp_path):
    lib, roots, paths = named
    copy = tmp_path / "lib"
    shutil.copytree(lib.folder, copy)
    gone = os.path.dirname(roots[0]) + b"/pics/sub\xff"
    result = run_bytes("remove", gone, "--json", "--library", str(copy))
    assert strict_json(result) == {"pictures": 1, "roots": []}
    after = Library.open(copy)
    left = {os.fsencode(r.path) for r in library_rows(after)}
    assert left == {p for p in paths if not p.startswith(gone + b"/")}
    assert after.vector_index().ntotal == len(left)
    result = run_bytes("remove", roots[1], "--json", "--library", str(copy))
    removed = strict_json(result)
    assert base64.b64decode(removed["roots_base64"][0]) == roots[1] and removed["pictures"] == len(MORE)


def test_json_is_utf8_under_any_locale_and_gives_the_exact_bytes_back(named, tmp_path):
    lib, roots, paths = named
    before = snapshot(lib.folder)
    L = library_args(lib)
    own = next(p for p in paths if p.endswith(b"\xffname.png"))
    out = Path(fs(os.fsencode(tmp_path) + b"/out\xff/export \xfe.json"))
    out.parent.mkdir()
    answers = run_bytes_together(lib, {  # one process for all; one real `search query` process besides
        "query picture": ("query", "--image", own, "--top", "50", "--json"),
        "duplicates": ("duplicates", "--threshold", "-1", "--json"),
        "export": ("export",),
        "status": ("status", "--json"),
        "export to file": ("export", "--vectors", "-o", os.fsencode(out)),
    })
    status, result = strict_json(answers.pop("status")), answers.pop("export to file")
    answers["query"] = run_bytes("query", "a picture", "--top", "50", "--json", *L)
    for name, answer in answers.items():
        value = strict_json(answer)
        assert sorted(exact_paths(value)) == sorted(paths), name
    assert exact_paths(strict_json(answers["query picture"]))[0] == own  # the picture itself, first
    assert [base64.b64decode(b) if b else r.encode() for r, b in zip(status["roots"], status["roots_base64"],
                                                                      strict=True)] == sorted(roots)
    assert result.returncode == 0 and result.stdout == b"", result.stderr
    exported = strict_json(out.read_bytes())
    assert sorted(exact_paths(exported)) == sorted(paths)
    assert all(len(p["vector"]) == 128 for p in exported["pictures"])
    assert snapshot(lib.folder) == before


def test_tag_json_under_a_strict_locale(named, tmp_path):
    lib, _, paths = named
    copy = tmp_path / "lib"
    shutil.copytree(lib.folder, copy)
    result = run_bytes("tag", "--labels", "red,blue,\x1b[2J", "--json", "--library", str(copy))
    answer = strict_json(result)
    assert answer["labels"] == ["red", "blue", "\x1b[2J"] and answer["classified"] == len(paths)
    text = run_bytes("tag", "--labels", "red,blue,\x1b[2J", "--library", str(copy))
    assert text.returncode == 0 and b"\x1b" not in text.stdout and b"$'\\x1b[2J'" in text.stdout


def test_print0_gives_every_name_exactly(named):
    lib, _, paths = named
    result = run_bytes("query", "a picture", "--top", "50", "--print0", *library_args(lib))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"\0") and sorted(result.stdout.split(b"\0")[:-1]) == sorted(paths)
    both = run_bytes("query", "a picture", "--print0", "--paths-only", *library_args(lib))
    assert_refused(subprocess.CompletedProcess(both.args, both.returncode, "", both.stderr.decode()),
                   "choose one output")


def test_names_reach_a_terminal_escaped(named, tiny_encoder):
    lib, roots, paths = named
    before = snapshot(lib.folder)
    L = library_args(lib)
    lines = run_bytes("query", "a picture", "--top", "50", "--paths-only", *L).stdout.decode().splitlines()
    assert len(lines) == len(paths)  # a newline in a name no longer splits it
    for line in lines:
        assert not any(c in line for c in "\x1b\x9b\u202e\n\r"), line
        if line.startswith("$'"):  # bash reads the quoted form back to the exact bytes
            printed = subprocess.run(["bash", "-c", f"printf %s {line}"], capture_output=True, check=True).stdout
            assert printed in paths, (line, printed)
        else:
            assert line.encode() in paths
    assert {shown(fs(p)).startswith("$'") for p in paths} == {True, False}
    missing = os.path.dirname(roots[0]) + b"/gone\n\x1b[2Jaway.png"
    answers = run_bytes_together(lib, {"ranked": ("query", "a picture", "--top", "50"),  # the rest in one process
                                       "groups": ("duplicates", "--threshold", "-1"), "status": ("status",),
                                       "missing": ("query", "--image", missing)})
    ranked = answers["ranked"]
    assert ranked.returncode == 0 and len(ranked.stdout.splitlines()) == len(paths)
    assert not any(b in ranked.stdout for b in (b"\x1b", b"\xc2\x9b", "\u202e".encode()))
    groups = answers["groups"].stdout
    assert len(groups.splitlines()) == 1 + len(paths) and b"\x1b" not in groups
    status = answers["status"].stdout.decode()
    assert "roots:     " + ", ".join(shown(fs(r)) for r in sorted(roots)) + "\n" in status
    result = answers["missing"]
    assert_refused(subprocess.CompletedProcess(result.args, result.returncode, "", result.stderr.decode()),
                   "picture not found", "gone\\n\\x1b[2Jaway.png")
    assert snapshot(lib.folder) == before


def test_export_output_errors_are_one_line(named, tmp_path):
    lib, _, _ = named
    before = snapshot(lib.folder)
    L = library_args(lib)
    targets = {"is a folder: name a file to write": tmp_path,
               "No such file or directory": tmp_path / "missing" / "x.json"}
    answers = run_cli_commands(lib.folder, {message: ["export", "-o", str(t)] for message, t in targets.items()})
    answers["No space left on device"] = run_cli("export", "-o", "/dev/full", *L)  # one real process besides
    for message, result in answers.items():
        if message != "api":
            assert_refused(result, message)
    assert not (tmp_path / "missing").exists()
    assert snapshot(lib.folder) == before
