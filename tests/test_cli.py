"""`search` as a user runs it: real subprocesses, exit codes, JSON shapes, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, make_pictures, run_cli, run_cli_reporting_imports

from encoders import default_model


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    photos = make_pictures(root / "photos", 8)
    (root / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    library = root / "lib"
    result = run_cli("index", str(root / "photos"), "--library", str(library), *TINY, check=True)
    assert "8 added" in result.stdout and "1 failed" in result.stdout
    assert "RANDOM WEIGHTS" in result.stderr  # --pretrained none is never silent
    assert "Traceback" not in result.stderr
    # The run had the PyTorch model loaded: it exported the text tower, so that text queries need not load it.
    assert "text model exported to ONNX" in result.stderr and list(library.glob("text.*.onnx"))
    return library, photos


def test_status_json_and_failed_list(indexed):
    library, _ = indexed
    status = json.loads(run_cli("status", "--library", str(library), "--json", check=True).stdout)
    assert status["pictures"] == 8 and status["failed"] == 1
    assert status["model"]["architecture"] == "clipsearch-tiny" and status["library"] == str(library)
    failed = json.loads(run_cli("status", "--library", str(library), "--failed", "--json", check=True).stdout)
    assert [f["path"].rsplit("/", 1)[1] for f in failed["failures"]] == ["broken.jpg"]
    text = run_cli("status", "--library", str(library), "--failed", check=True).stdout
    assert "broken.jpg" in text and "clipsearch-tiny" in text


def test_image_query_json_finds_itself_first(indexed):
    library, photos = indexed
    out = run_cli("query", "--image", str(photos[5]), "--library", str(library), "--top", "3", "--json", check=True)
    results = json.loads(out.stdout)["results"]
    assert len(results) == 3 and {"path", "score"} <= set(results[0])
    assert results[0]["path"] == str(photos[5]) and results[0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_text_query_paths_only_and_env_library(indexed):
    library, photos = indexed
    out = run_cli("query", "a red star", "--paths-only", "--top", "4", env={"SEARCH_LIBRARY": str(library)},
                  check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 4 and set(lines) <= {str(p) for p in photos}


def test_the_first_text_query_after_an_index_run_imports_no_torch(indexed):
    library, photos = indexed
    output, imported = run_cli_reporting_imports("query", "a red star", "--library", str(library), "--json")
    assert len(json.loads(output)["results"]) == 8 and imported == "[]"


def test_tagging_runs_on_the_exported_text_tower_without_torch_and_tags_as_the_model(indexed, tmp_path,
                                                                                     tiny_encoder):
    from encoders import PAPER_TEMPLATES
    from indexer import Library
    from search.tools import tag_pictures

    library, _ = indexed
    copy = tmp_path / "copy"
    shutil.copytree(library, copy)
    labels = ["a red thing", "a green thing", "a blue thing"]
    output, imported = run_cli_reporting_imports("tag", "--labels", ",".join(labels), "--library", str(library),
                                                 "--json")
    pytorch = tag_pictures(Library.open(copy), tiny_encoder, labels, PAPER_TEMPLATES)
    assert imported == "[]" and json.loads(output) == pytorch.as_dict(), (output, pytorch)


def test_rerun_through_the_cli_embeds_nothing(indexed):
    library, photos = indexed
    out = run_cli("index", str(photos[0].parent), "--library", str(library), "--json", check=True)
    summary = json.loads(out.stdout)
    assert summary["embedded"] == 0 and summary["unchanged"] == 9


@pytest.mark.parametrize("args, message", [
    (("query",), "nothing to search for"),
    (("query", "--image", "/nonexistent/cat.jpg"), "picture not found"),
    (("query", "dog", "--top", "0"), "--top"),
    (("query", "dog", "--model", "ViT-B-32", "--pretrained", "none"), "re-index"),
    (("index", "/nonexistent/photos"), "root not found"),
    (("query", "dog", "--bogus"), "No such option: --bogus (see `search query --help`)"),
    (("nosuchcommand",), "No such command"),
    (("index", "/tmp", "--wait", "inf"), "not a finite number"),
    (("index", "/tmp", "--decode-timeout", "nan"), "--decode-timeout"),
    (("query", "dog", "--min-score", "nan"), "--min-score"),
])
def test_bad_calls_exit_2_with_one_line(indexed, args, message):
    library, _ = indexed
    before = (library / "library.db").read_bytes()
    result = run_cli(*args, "--library", str(library))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]  # --pretrained none
    assert len(said) == 1 and said[0].startswith("error: "), result.stderr
    assert (library / "library.db").read_bytes() == before


def test_missing_library_and_offline_default_model(tmp_path):
    result = run_cli("query", "dog", "--library", str(tmp_path / "nothing"))
    assert result.returncode == 2 and "search index" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nothing").exists()  # a query never creates a library
    make_pictures(tmp_path / "photos", 1)
    result = run_cli("index", str(tmp_path / "photos"), "--library", str(tmp_path / "lib"),
                     env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    chosen = default_model()  # this machine's: the CLI's process runs on the same CPU
    note, error = result.stderr.strip().splitlines()
    assert note == f"note: a new library on {chosen.model} ({chosen.pretrained}), {chosen.why}"
    assert error.startswith("error: ") and "Without network, use --checkpoint" in error


def test_help_lists_the_commands():
    out = run_cli("--help", check=True).stdout
    for command in ("index", "query", "status"):
        assert command in out


def test_app_without_streamlit_says_what_to_install(tmp_path):
    """Should Streamlit ever be missing (a broken environment), one line says what to install, exit 2."""
    code = ("import sys; sys.modules['streamlit'] = None; sys.argv = ['search', 'app', '--library', sys.argv[1]]; "
            "from search.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "lib")], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "pip install streamlit" in result.stderr
