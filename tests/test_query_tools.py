"""Combined queries, filters inside the vector search, the engine's two text towers, and the library tools.

Most tests use a synthetic library whose vectors the test chooses (so results can be
predicted and compared with brute force); the model-dependent ones use the tiny model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, both_backends, library_rows, make_pictures

from indexer import Library, index_folders
from indexer.hashes import content_hash
from indexer.store import utcnow
from indexer.vectors import VectorIndex
from search import SearchEngine, Term
from search.filters import Filters
from search.terms import TermError, combine, parse_terms
from search.tools import find_duplicates, remove_paths

DIM = 32


def cli(*args: str, check: bool = False):
    """`search ...` in this process (a subprocess pays seconds of imports); stdout and stderr kept apart."""
    from typer.testing import CliRunner

    from search.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if check and result.exit_code != 0:
        raise AssertionError(f"search {' '.join(map(str, args))} exited {result.exit_code}:\n{result.stderr}"
                             f"{result.exception!r}")
    result.returncode = result.exit_code
    return result


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def make_synthetic(folder, entries: list[dict]) -> Library:
    """A library with chosen rows and vectors (no model needed): each entry has path, vector and optionally
    taken_at, mtime_ns, content_hash. Files are created so picture terms can name them."""
    lib = Library.open(folder, create=True)
    lib.store.writes.set_model("synthetic", "synthetic:0", "synthetic0000000", "none", DIM)
    rows = []
    for e in entries:
        path = e["path"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(e.get("bytes", path.encode()))
        st = os.stat(path)
        if "mtime_ns" in e:
            os.utime(path, ns=(e["mtime_ns"], e["mtime_ns"]))
            st = os.stat(path)
        rows.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "content_hash": e.get("hash", content_hash(path.encode())),
                     "width": 10, "height": 10, "taken_at": e.get("taken_at"), "status": "ok",
                     "vector": unit(e["vector"]).tobytes(), "indexed_at": utcnow()})
    lib.store.writes.commit_batch([], rows)
    record = lib.model
    index = VectorIndex.rebuild(lib.store, DIM, record.generation)
    index.save(lib.folder, lib.store)
    return lib


def brute_force(lib: Library, vector: np.ndarray, k: int, keep=lambda row: True) -> list[tuple[int, float]]:
    rows = [r for r in library_rows(lib, "ok") if keep(r)]
    scored = sorted(((float(np.frombuffer(r.vector, np.float32) @ vector), r.id) for r in rows), reverse=True)
    return [(i, score) for score, i in scored[:k]]


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for i in range(60):
        folder = "small" if i < 12 else "big"
        ext = ["png", "jpg", "JPG"][i % 3]
        entry = {"path": str(tmp_path / "pics" / folder / f"p{i:02d}.{ext}"), "vector": rng.normal(size=DIM),
                 "mtime_ns": int(datetime(2020 + i % 5, 6, 1).timestamp() * 1e9)}
        if i % 4 == 0:
            entry["taken_at"] = datetime(2010 + i % 10, 1, 15, 12, 0)
        entries.append(entry)
    return make_synthetic(tmp_path / "lib", entries), rng


# -- terms ---------------------------------------------------------------------------------------

def test_short_and_long_forms_parse_to_the_same_terms(tmp_path):
    pool = tmp_path / "pool.jpg"
    pool.write_bytes(b"x")
    short = parse_terms(["2:golden retriever", "+", str(pool), "-", "indoor"])
    long = parse_terms(["golden retriever"], weight=2, add=[str(pool)], subtract=["indoor"])
    assert short == long == [Term("golden retriever", 2.0, False), Term(str(pool), 1.0, True),
                             Term("indoor", -1.0, False)]
    # Unquoted words are one text; a file among them is its own (picture) term.
    assert parse_terms(["golden", "retriever", str(pool)]) == [Term("golden retriever", 1.0, False),
                                                               Term(str(pool), 1.0, True)]
    assert parse_terms(["-", "0.5:dark"]) == [Term("dark", -0.5, False)]
    for bad in (["dog", "+"], ["dog", "+", "-", "cat"], ["0:dog"]):
        with pytest.raises(TermError):
            parse_terms(bad)
    with pytest.raises(TermError):
        parse_terms(["2:dog"], weight=3)


def test_combined_query_is_the_renormalised_weighted_sum(synthetic):
    lib, rng = synthetic
    engine = SearchEngine(lib.folder)
    a, b = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    row = library_rows(lib)[0]
    stored = np.frombuffer(row.vector, np.float32)
    terms = [Term(a, 2.0), Term(row.path, 1.0), Term(b, -0.5)]
    expected = combine([a, stored, b], [2.0, 1.0, -0.5])
    assert np.allclose(expected, unit(2 * a + stored - 0.5 * b), atol=1e-6)
    got = engine.query(terms=terms, top_k=8)
    assert [(r.id, round(r.score, 4)) for r in got] == [(i, round(s, 4)) for i, s in brute_force(lib, expected, 8)]


def test_picture_term_finds_itself_first(synthetic):
    lib, _ = synthetic
    paths = [r.path for r in library_rows(lib)[:5]]
    engine = SearchEngine(lib.folder)
    for path in paths:
        assert engine.query(image=path, top_k=1)[0].path == path
        assert engine.query(terms=[Term(path)], top_k=1)[0].path == path
    assert not engine.torch_loaded  # the library's own pictures: their stored vectors, no model


# -- filters -------------------------------------------------------------------------------------

def _keep(filters: Filters):
    def keep(row) -> bool:
        if filters.under and not row.path.startswith(filters.under.rstrip("/") + "/"):
            return False
        when = row.taken_at or datetime.fromtimestamp(row.mtime_ns / 1e9)
        if filters.after and when < filters.after:
            return False
        if filters.before and when >= filters.before:
            return False
        return not filters.exts or row.path.rsplit(".", 1)[-1].lower() in filters.exts
    return keep


@pytest.mark.parametrize("kwargs", [
    {"under": "pics/small"},
    {"ext": ["jpg"]},
    {"ext": "png,jpg"},
    {"after": "2022"},
    {"before": "2021-06-02"},
    {"after": "2012-01", "before": "2023"},
    {"under": "pics/big", "ext": "JPG", "after": "2021"},
])
@both_backends
def test_filtered_search_equals_brute_force_over_the_filtered_rows(synthetic, tmp_path, kwargs):
    lib, rng = synthetic
    if "under" in kwargs:
        kwargs = {**kwargs, "under": str(tmp_path / kwargs["under"])}
    engine = SearchEngine(lib.folder)
    filters = Filters.make(**kwargs)
    query = unit(rng.normal(size=DIM))
    expected = brute_force(lib, query, 10, _keep(filters))
    assert expected, "the filter should match something"
    got = engine.query(terms=[Term(query)], top_k=10, **{("tags" if k == "tag" else k): v for k, v in kwargs.items()})
    assert [(r.id, round(r.score, 4)) for r in got] == [(i, round(s, 4)) for i, s in expected]
    assert engine.query(terms=[Term(query)], top_k=10, filters=filters) == got  # the same filter, made beforehand


@both_backends
def test_asking_for_ten_under_a_small_folder_returns_ten(synthetic, tmp_path):
    lib, rng = synthetic
    engine = SearchEngine(lib.folder)
    results = engine.query(terms=[Term(unit(rng.normal(size=DIM)))], top_k=10, under=tmp_path / "pics" / "small")
    assert len(results) == 10 and all("/small/" in r.path for r in results)
    assert len(engine.query(terms=[Term(unit(rng.normal(size=DIM)))], top_k=50,
                            under=tmp_path / "pics" / "small")) == 12


def test_min_score_and_sort(synthetic):
    lib, rng = synthetic
    engine = SearchEngine(lib.folder)
    q = [Term(unit(rng.normal(size=DIM)))]
    top = engine.query(terms=q, top_k=20)
    cut = top[5].score
    assert engine.query(terms=q, top_k=20, min_score=cut) == top[:6]
    by_path = engine.query(terms=q, top_k=20, sort="path")
    assert [r.path for r in by_path] == sorted(r.path for r in top)
    by_date = engine.query(terms=q, top_k=20, sort="date")
    dates = [r.taken_at or r.modified for r in by_date]
    assert dates == sorted(dates) and {r.id for r in by_date} == {r.id for r in top}
    assert engine.query(terms=q, top_k=20, sort="date", min_score=cut) == [r for r in by_date if r.score >= cut]


# -- duplicates ----------------------------------------------------------------------------------

@both_backends
def test_duplicates_by_construction(tmp_path):
    rng = np.random.default_rng(1)
    base_a, base_b = unit(rng.normal(size=DIM)), unit(rng.normal(size=DIM))
    # A chain: c1 ~ c2 ~ c3 above the threshold, c1 and c3 below it: one group by connectivity.
    step = unit(rng.normal(size=DIM))
    chain = [unit(base_b + t * 0.25 * step) for t in range(3)]
    d = tmp_path / "pics"
    entries = [
        {"path": str(d / "a1.png"), "vector": base_a, "hash": "same", "bytes": b"A"},
        {"path": str(d / "a2.png"), "vector": base_a, "hash": "same", "bytes": b"A"},
        {"path": str(d / "a3.png"), "vector": unit(base_a + 0.05 * unit(rng.normal(size=DIM)))},
        {"path": str(d / "a4.png"), "vector": unit(base_a + 0.05 * unit(rng.normal(size=DIM)))},
        *[{"path": str(d / f"c{i}.png"), "vector": v} for i, v in enumerate(chain)],
        *[{"path": str(d / f"r{i}.png"), "vector": rng.normal(size=DIM)} for i in range(20)],
    ]
    lib = make_synthetic(tmp_path / "lib", entries)
    threshold = float(chain[0] @ chain[1]) - 1e-3
    assert float(chain[0] @ chain[2]) < threshold
    groups = find_duplicates(lib, threshold)
    assert [sorted(os.path.basename(m.path) for m in g.members) for g in groups] == [
        ["a1.png", "a2.png", "a3.png", "a4.png"], ["c0.png", "c1.png", "c2.png"]]
    exact = {os.path.basename(m.path): m.exact for m in groups[0].members}
    assert exact == {"a1.png": True, "a2.png": True, "a3.png": False, "a4.png": False}
    assert groups[0].members[0].score == 1.0 and all(m.score >= threshold - 0.1 for m in groups[0].members)
    out = cli("duplicates", "--threshold", str(threshold), "--json", "--library", str(lib.folder), check=True)
    data = json.loads(out.stdout)
    assert [g["size"] for g in data["groups"]] == [4, 3]
    assert cli("duplicates", "--threshold", "2", "--library", str(lib.folder)).returncode == 2


# -- remove, export ------------------------------------------------------------------------------

@both_backends
def test_remove_files_folders_and_roots(synthetic, tmp_path):
    lib, _ = synthetic
    lib.store.writes.mark_indexed([str(tmp_path / "pics" / "small")], {})
    one = str(tmp_path / "pics" / "big" / "p21.png")
    summary = remove_paths(lib, [one])
    assert summary.pictures == 1 and lib.store.reads.picture_by_path(one) is None
    summary = remove_paths(lib, [tmp_path / "pics" / "small"])
    assert summary.pictures == 12 and summary.roots == [str(tmp_path / "pics" / "small")]
    assert lib.store.reads.counts()["pictures"] == 47
    index = lib.vector_index().index
    assert index.ntotal == 47 and lib.model.index_generation == lib.model.generation
    result = cli("remove", str(tmp_path / "nowhere"), "--library", str(lib.folder))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "nothing in the library" in result.stderr


@both_backends
def test_export_json_and_jsonl_with_vectors(synthetic, tmp_path):
    lib, _ = synthetic
    out = cli("export", "--json", "--vectors", "--library", str(lib.folder), check=True)
    data = json.loads(out.stdout)
    assert data["model"]["embed_dim"] == DIM and len(data["pictures"]) == 60
    first = data["pictures"][0]
    row = lib.store.reads.pictures([first["id"]], vectors=True)[first["id"]]
    assert first["path"] == row.path and np.allclose(first["vector"], np.frombuffer(row.vector, np.float32))
    assert "vector" not in json.loads(cli("export", "--library", str(lib.folder), check=True).stdout)["pictures"][0]
    # JSON Lines: one picture a line, each exactly a picture of the JSON object, to stdout or a file
    lines = cli("export", "--jsonl", "--vectors", "--library", str(lib.folder), check=True).stdout.splitlines()
    assert [json.loads(line) for line in lines] == data["pictures"]
    cli("export", "--jsonl", "--vectors", "-o", str(tmp_path / "out.jsonl"), "--library", str(lib.folder), check=True)
    assert (tmp_path / "out.jsonl").read_text().splitlines() == lines
    cli("export", "--json", "--vectors", "--output", str(tmp_path / "out.json"), "--library", str(lib.folder),
        check=True)
    assert json.loads((tmp_path / "out.json").read_bytes()) == data
    plain = cli("export", "--jsonl", "--library", str(lib.folder), check=True).stdout.splitlines()
    assert len(plain) == 60 and all("vector" not in json.loads(line) for line in plain)


# -- the model: the engine's two text towers, the CLI, tags, reindex ------------------------------

@pytest.fixture(scope="module")
def tiny_library(tmp_path_factory):
    """A tiny-model library of 24 drawn pictures, and an engine whose first query exported its text tower to ONNX
    (module-wide: it takes a while)."""
    pytest.importorskip("onnxruntime", reason="the ONNX text tower needs onnxruntime (and onnx to export)")
    pytest.importorskip("onnx")
    from encoders import ModelSpec, load_encoder
    from encoders.text.onnx_runtime import OnnxTextEncoder

    base = tmp_path_factory.mktemp("tiny")
    make_pictures(base / "pics" / "a", 12)
    make_pictures(base / "pics" / "b", 12, start=12, ext="jpg")
    encoder = load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None))
    lib = Library.open(base / "lib", create=True)
    index_folders(lib, encoder, [base / "pics"])
    engine = SearchEngine(lib.folder, encoder=encoder)
    assert engine.text_encoder is encoder  # nothing exported yet: PyTorch's tower
    assert engine.query("a first query", top_k=3)
    # That query had the PyTorch model at hand: the tower is exported, and every later query runs it in ONNX Runtime.
    assert engine.text_towers.exported and isinstance(engine.text_encoder, OnnxTextEncoder)
    return base, lib, engine


def pytorch_engine(lib: Library, engine: SearchEngine) -> SearchEngine:
    """The same library with its text tower fixed to PyTorch's."""
    return SearchEngine(lib.folder, encoder=engine.encoder, text_encoder=engine.encoder)


TEXTS = ["a dog", "golden retriever on a beach", "RECEIPT!!", "café &amp; crème brûlée", "日本語のテキスト", "",
         "a " * 80 + "very long caption that gets truncated", "it's what we'd've done", "4 cats, 12 dogs & 1 bird"]


def test_pure_python_tokenizer_matches_open_clip(tiny_library):
    from encoders.text.tokenizer import ClipTokenizer

    _, _, engine = tiny_library
    ours = ClipTokenizer(engine.encoder.tokenizer.context_length)
    assert np.array_equal(ours(TEXTS), engine.encoder.tokenizer(TEXTS).numpy())
    import open_clip
    assert np.array_equal(ClipTokenizer(77)(TEXTS), open_clip.get_tokenizer("ViT-B-32")(TEXTS).numpy())


def test_the_two_text_towers_give_the_same_vectors_and_top_ten(tiny_library):
    """ONNX Runtime's tower (the engine's choice once exported) against PyTorch's, as bench/onnx_agreement.py
    measures them: the cosine of each text's two vectors, and the identical top 10 in the identical order."""
    from encoders import PAPER_TEMPLATES

    _, lib, engine = tiny_library
    pytorch = pytorch_engine(lib, engine)
    texts = TEXTS + [t.format(label) for label in ("dog", "red circle") for t in PAPER_TEMPLATES[:20]]
    onnx_vectors, torch_vectors = engine.text_vectors(texts), pytorch.text_vectors(texts)
    assert (onnx_vectors * torch_vectors).sum(axis=1).min() >= 0.99999  # README; measured 0.9999999 (tiny, ViT-B-32)
    for onnx_vector, torch_vector in zip(onnx_vectors, torch_vectors, strict=True):
        fast, slow = engine.search_vector(onnx_vector, top_k=10), pytorch.search_vector(torch_vector, top_k=10)
        assert [r.id for r in fast] == [r.id for r in slow]
        assert np.allclose([r.score for r in fast], [r.score for r in slow], atol=1e-5)


@pytest.mark.parametrize("ensemble", [False, True])
def test_the_two_text_towers_answer_every_kind_of_query_alike(tiny_library, ensemble):
    """Combined terms (weights, a library picture, a subtracted text), ensembles and filters: the same answers."""
    base, lib, engine = tiny_library
    pytorch = pytorch_engine(lib, engine)
    pic = str(base / "pics" / "a" / "pic003.png")
    filters = dict(ext="jpg", under=base / "pics") if ensemble else {}
    for terms in ([Term("a red circle")], [Term("x", 2.0, False), Term(pic), Term("blue", -1.0, False)]):
        fast = engine.query(terms=terms, top_k=10, ensemble=ensemble, **filters)
        slow = pytorch.query(terms=terms, top_k=10, ensemble=ensemble, **filters)
        assert len(fast) == 10 and [r.path for r in fast] == [r.path for r in slow]
        assert np.allclose([r.score for r in fast], [r.score for r in slow], atol=1e-5)


def test_an_export_of_another_version_or_model_is_not_used(tiny_library, tmp_path):
    from encoders.onnx import sidecar

    _, lib, engine = tiny_library
    fingerprint = lib.model.fingerprint
    assert sidecar.export_state(lib.folder, fingerprint) == sidecar.READY
    files = sidecar.tower_files(lib.folder, fingerprint)
    older = tmp_path / "older"
    older.mkdir()
    for path in (files.graph, files.weights):
        (older / path.name).symlink_to(path)
    meta = json.loads(files.meta.read_text())
    for other in ({**meta, "version": sidecar.EXPORT_VERSION - 1}, {**meta, "fingerprint": "0" * 16}):
        (older / files.meta.name).write_text(json.dumps(other))
        assert sidecar.export_state(older, fingerprint) == sidecar.MISSING


def test_cli_query_forms_and_errors(tiny_library):
    base, lib, engine = tiny_library
    L = ("--library", str(lib.folder))
    pic = str(base / "pics" / "a" / "pic003.png")
    short = cli("query", "2:red circle", "+", pic, "-", "blue", "--json", *L, check=True)
    long = cli("query", "red circle", "--weight", "2", "--add", pic, "--subtract", "blue", "--json", *L,
                   check=True)
    api = engine.query(terms=[Term("red circle", 2.0, False), Term(pic), Term("blue", -1.0, False)], top_k=10)
    assert json.loads(short.stdout) == json.loads(long.stdout)
    assert [r["path"] for r in json.loads(short.stdout)["results"]] == [r.path for r in api]
    self_hit = cli("query", "--image", pic, "--top", "1", "--paths-only", *L, check=True)
    assert self_hit.stdout.strip() == pic
    filtered = cli("query", "circle", "--under", str(base / "pics" / "b"), "--ext", "jpg", "--top", "30",
                       "--sort", "path", "--paths-only", *L, check=True).stdout.split()
    assert len(filtered) == 12 and filtered == sorted(filtered) and all("/b/" in p for p in filtered)
    for bad in (["dog", "+"], ["dog", "--after", "2020-13"], ["dog", "--sort", "size"], ["dog", "--tag", "nope"],
                ["dog", "--templates", "x.txt"], ["dog", "--ensemble", "--templates", str(base / "none.txt")]):
        result = cli("query", *bad, *L)
        assert result.returncode == 2 and result.stderr.startswith("error:"), (bad, result.stderr)
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_cli_api_and_page_answer_alike(tiny_library, monkeypatch):
    """`search query`, SearchEngine.query and the search page: one query path, the same ranking."""
    pytest.importorskip("streamlit")
    from app_helpers import open_app, result_names

    _, lib, engine = tiny_library
    api = engine.query("a red circle", top_k=10)
    shown = json.loads(cli("query", "a red circle", "--top", "10", "--json", "--library", lib.folder,
                           check=True).stdout)["results"]
    at = open_app(monkeypatch, lib.folder)
    at.text_input(key="q").input("a red circle").run()
    at.sidebar.slider(key="top_k").set_value(10).run()
    assert not at.exception and not at.error
    page_scores = [float(m.value.split("**")[1]) for m in at.markdown if m.value.startswith("**") and " · " in m.value]
    assert [r["path"] for r in shown] == [r.path for r in api]
    assert [r["score"] for r in shown] == pytest.approx([r.score for r in api], abs=1e-6)
    assert result_names(at) == [os.path.basename(r.path) for r in api]
    assert page_scores == [round(r.score, 3) for r in api]


def cold_queries_without_torch(library: Path, queries: list[list[str]], env: dict | None = None) -> str:
    """Each `search query` (``--paths-only``) in one fresh process, which must import neither torch nor open_clip;
    what they printed."""
    code = ("import json, sys\n"
            "from search.cli import app\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    try:\n"
            "        app(['query', *args, '--paths-only', '--library', sys.argv[2]], prog_name='search')\n"
            "    except SystemExit as e:\n"
            "        assert not e.code, (args, e.code)\n"
            "assert not {'torch', 'open_clip'} & set(sys.modules), 'torch or open_clip was imported'\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(queries), str(library)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cold_text_queries_import_no_torch(tiny_library):
    """Every form of text query the tower serves (an ensemble, a library picture mixed in, filters) runs without
    torch or open_clip: a whole `search query` process."""
    base, lib, _ = tiny_library
    pic = str(base / "pics" / "a" / "pic003.png")
    queries = [["a dog"], ["a dog", "--ensemble"],
               ["2:red circle", "+", pic, "-", "blue", "--under", str(base / "pics"), "--ext", "png"],
               ["--image", pic, "--sort", "path"]]
    assert cold_queries_without_torch(lib.folder, queries).count("\n") == 10 * len(queries)


def test_text_queries_on_postgresql_export_and_use_the_onnx_tower(tmp_path, tiny_encoder, postgres_url):
    """A library whose rows are in PostgreSQL takes the same query path: the first text query (--database) loads
    PyTorch and exports the tower beside the library; later ones ($SEARCH_DATABASE_URL) run without torch, filters
    rendered for PostgreSQL, and agree with the API."""
    pytest.importorskip("onnxruntime", reason="the ONNX text tower needs onnxruntime (and onnx to export)")
    pytest.importorskip("onnx")
    make_pictures(tmp_path / "pics" / "a", 6)
    make_pictures(tmp_path / "pics" / "b", 6, start=6, ext="jpg")
    lib = Library.open(tmp_path / "lib", create=True, database=postgres_url)
    index_folders(lib, tiny_encoder, [tmp_path / "pics"])
    L = ("--library", str(lib.folder))
    first = cli("query", "a red circle", "--paths-only", "--database", postgres_url, *L, check=True)
    assert "text model exported to ONNX" in first.stderr
    assert list(lib.folder.glob("text.*.onnx"))
    queries = [["a red circle"], ["a red circle", "--under", str(tmp_path / "pics" / "b"), "--ext", "jpg"]]
    shown = cold_queries_without_torch(lib.folder, queries, env={**os.environ, "SEARCH_DATABASE_URL": postgres_url})
    engine = SearchEngine(lib.folder, database=postgres_url)
    api = [r.path for r in engine.query("a red circle", top_k=10)]
    api_b = [r.path for r in engine.query("a red circle", top_k=10, under=tmp_path / "pics" / "b", ext="jpg")]
    assert shown.split("\n")[:-1] == api + api_b and first.stdout.split() == api
    assert len(api_b) == 6 and all("/b/" in p for p in api_b)


def test_tags_zero_shot_filter_and_rerun_only_new(tiny_library, tmp_path):
    base, lib, engine = tiny_library
    L = ("--library", str(lib.folder))
    first = json.loads(cli("tag", "--labels", "circle,square,triangle", "--json", *L, check=True).stdout)
    assert first["classified"] == 24 and sum(first["counts"].values()) == 24
    again = json.loads(cli("tag", "--labels", "circle,square,triangle", "--json", *L, check=True).stdout)
    assert again["classified"] == 0 and again["counts"] == first["counts"]
    label = max(first["counts"], key=first["counts"].get)
    tags = lib.store.reads.tags_of(r.id for r in library_rows(lib))
    tagged = {picture_id for picture_id, carried in tags.items() if label in carried}
    results = engine.query("anything", top_k=50, tags=label)
    assert {r.id for r in results} == tagged
    out = cli("query", "anything", "--tag", label, "--top", "50", "--paths-only", *L, check=True)
    assert sorted(out.stdout.split()) == sorted(r.path for r in results)
    assert cli("tag", "--labels", "onlyone", *L).returncode == 2


@both_backends
def test_reindex_swaps_in_a_checkpoint_model_and_queries_keep_working(tmp_path, tiny_encoder):
    import torch
    from safetensors.torch import save_file

    make_pictures(tmp_path / "pics", 10)
    lib = Library.open(tmp_path / "lib", create=True)
    index_folders(lib, tiny_encoder, [tmp_path / "pics"])
    old_fingerprint = lib.model.fingerprint
    tags = json.loads(cli("tag", "--labels", "circle,square", "--json", "--library", str(lib.folder),
                          check=True).stdout)["counts"]
    label = max(tags, key=tags.get)
    tagged = cli("query", "x", "--tag", label, "--top", "50", "--paths-only", "--library", str(lib.folder),
                 check=True).stdout.split()
    state = {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v).contiguous()
             for k, v in tiny_encoder.model.state_dict().items()}
    weights = tmp_path / "other.safetensors"
    save_file(state, str(weights))
    result = cli("reindex", "--model", "clipsearch-tiny", "--checkpoint", str(weights), "--json", "--library",
                     str(lib.folder), check=True)
    summary = json.loads(result.stdout)
    assert summary["pictures_before"] == summary["pictures_after"] == 10
    assert summary["tags_kept"] == sum(tags.values()) == 10  # tags are the user's: they survive the new model
    swapped = Library.open(tmp_path / "lib")
    assert swapped.model.fingerprint != old_fingerprint and swapped.model.weights.startswith("checkpoint:")
    assert not (tmp_path / ".lib.reindex").exists()
    pic = str(tmp_path / "pics" / "pic004.png")
    first = cli("query", "--image", pic, "--top", "1", "--paths-only", "--library", str(swapped.folder),
                    check=True)
    assert first.stdout.strip() == pic
    kept = cli("query", "x", "--tag", label, "--top", "50", "--paths-only", "--library", str(swapped.folder),
               check=True).stdout.split()
    assert sorted(kept) == sorted(tagged)
    slow = cli("query", "a red square", "--json", "--library", str(swapped.folder), check=True)  # exports ONNX
    fast = cli("query", "a red square", "--json", "--library", str(swapped.folder), check=True)
    assert [r["path"] for r in json.loads(slow.stdout)["results"]] == [
        r["path"] for r in json.loads(fast.stdout)["results"]]
    assert list(swapped.folder.glob("text.*.onnx"))
    assert cli("reindex", "--library", str(swapped.folder)).returncode == 2
