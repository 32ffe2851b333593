"""Query latency: warm Python API, FAISS at 100k / 1M vectors, and the cold `search query` command.

    python bench/query_bench.py [--sizes 100000 1000000] [--model ViT-B-32 --pretrained none] [--runs 30]
                                [--before REV] [--stand-in-tokenizer]

Builds a synthetic library per size (random unit vectors under a real model record, rows
written straight into SQLite; cached in --out), then prints side by side:

- warm text tower: PyTorch vs the exported ONNX tower (what the engine runs for texts);
- warm API: ``SearchEngine.query(text)`` p50/p95 (text tower + filtered/unfiltered FAISS + rows);
- FAISS alone: exact search p50/p95, unfiltered and with a 1 % id selector (a small folder);
- cold CLI: wall and CPU time of a whole `search query "..."` process, and `search --help`;
- the import of open_clip's own tokenizer, which the pure-Python copy avoids.

With ``--before REV`` (a commit of this repository, e.g. the one before a change), that commit's tree is
extracted into --out and run beside this one in the same run, on a library of the smallest size that its own
code builds (each release writes its own schema and exports its text tower in its own format): cold `search
query` alternately one process of each, and the warm API of each in fresh processes taking turns (p50 of a
whole query and of the text tower alone, ``text_vector``; the saving is before − now). Ratios are "before /
now" (higher is better for now). The 1-minute load average is recorded before and after each part: figures
from a busy machine are only comparable within one run.

``--stand-in-tokenizer``: a model whose tokenizer comes from the Hugging Face hub (SigLIP's) runs offline with a
stand-in of the same size in a hub cache of the run's own (see ``stand_in_tokenizer``).

    python bench/query_bench.py --ensemble-eval RUN/model [--eval-data ../shared/data/emoji-twitter]

instead measures whether ``--ensemble`` (prompt templates) helps: a model trained on
emoji-google indexes emoji-twitter through the product's indexer, then every caption is a
text query (recall@1/5/10 of its own picture), plain vs ensembled with the paper's 80 and
the short templates; and zero-shot classification of the pictures by category.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["a dog on the beach", "golden retriever", "receipt", "a red car at night", "birthday cake with candles",
         "mountains in the snow", "a screenshot of a phone", "two cats sleeping", "city skyline", "a bowl of soup"]


def pct(values: list[float]) -> dict:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2),
            "n": len(values)}


def build_library(folder: Path, encoder, size: int, seed: int = 0) -> None:
    """``size`` rows with random unit vectors under the encoder's model record; 1 % of them in folder 'small'."""
    from indexer import Library
    from indexer.store import utcnow
    from indexer.vectors import VectorIndex

    if (folder / "library.db").is_file():
        return
    if folder.exists():
        shutil.rmtree(folder)
    lib = Library.open(folder, create=True)
    lib.adopt_or_check_model(encoder.fingerprint)
    rng = np.random.default_rng(seed)
    dim = encoder.dim
    for start in range(0, size, 50_000):
        n = min(50_000, size - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        lib.store.writes.commit_batch([], [
            {"path": f"/synthetic/{'small' if (start + i) % 100 == 0 else 'big'}/{start + i:07d}.jpg", "size": 1000,
             "mtime_ns": 1_600_000_000_000_000_000 + start + i, "content_hash": f"h{start + i}", "width": 64,
             "height": 64, "status": "ok", "vector": v[i].tobytes(), "indexed_at": utcnow()} for i in range(n)])
    record = lib.model
    index = VectorIndex.rebuild(lib.store, dim, record.generation)
    index.save(lib.folder, lib.store)


def stand_in_tokenizer(model: str, root: Path) -> str | None:
    """Random weights need no download, but a SigLIP model's tokenizer does (open_clip fetches it from the Hugging
    Face hub). Offline, a stand-in takes its place, in a hub cache under ``root``, for this process and every one it
    starts: Gemma's shape (transformers' ``GemmaTokenizer``, as SigLIP 2's) with as many tokens as the model's
    vocabulary, their merges random. Loading it costs about what loading the real one does; the ids it gives differ,
    which timings do not depend on. Returns the hub repo it stands in for, or None (no hub tokenizer)."""
    import open_clip
    from huggingface_hub import constants

    text = (open_clip.get_model_config(model) or {}).get("text_cfg", {})
    repo = text.get("hf_tokenizer_name")
    if not repo:
        return None
    cache = root / "hub"
    # Before transformers is imported (it reads where the cache is once), and for the processes started later.
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
    sys.path.insert(0, str(ROOT / "tests"))
    from family_helpers import hub_snapshot  # the tests' hub cache layout: one way to make it

    snapshot = hub_snapshot(cache, repo, missing=["config.json"])
    if not (snapshot / "tokenizer.json").is_file():
        from transformers import GemmaTokenizer

        special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{b:02X}>" for b in range(256))]
        pieces = list("▁abcdefghijklmnopqrstuvwxyz0123456789")
        vocab = {token: i for i, token in enumerate(special + pieces)}
        merges, rng = [], random.Random(0)
        while len(vocab) < text["vocab_size"]:
            first, second = rng.choice(pieces), rng.choice(pieces)
            if len(first) + len(second) <= 12 and first + second not in vocab:
                vocab[first + second] = len(vocab)
                pieces.append(first + second)
                merges.append((first, second))
        GemmaTokenizer(vocab=vocab, merges=merges).save_pretrained(str(snapshot))
    return repo


def timed(fn, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def search_command(*args: str) -> list[str]:
    """`search ARGS` as its console script runs it, from the tree ``run_in`` runs it in."""
    return [sys.executable, "-c", "import sys; from search.cli import main; sys.exit(main())", *args]


def run_in(tree: Path, command: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall s, CPU s of the process, result) of one process running ``tree``'s code."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tree)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} (in {tree}): {result.stderr}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, result


def summary(times: list[float], cpu: list[float], loads: list[float]) -> dict:
    a = np.asarray(times)
    # On a busy machine wall time mostly measures the wait for a core; CPU time (user+sys) does not.
    return {"median_s": round(float(np.median(a)), 3), "min_s": round(float(a.min()), 3),
            "max_s": round(float(a.max()), 3), "cpu_median_s": round(float(np.median(cpu)), 3), "runs": len(a),
            "load_avg": round(float(np.mean(loads)), 2)}


def cold(sides: dict[str, tuple[Path, list[str]]], runs: int) -> dict[str, dict]:
    """Whole processes (label → (tree, command)), one of each side in turn (so all see the same load), ``runs``
    of each."""
    times = {label: ([], [], []) for label in sides}
    for _ in range(runs):
        for label, (tree, command) in sides.items():
            load = os.getloadavg()[0]
            wall, cpu, _ = run_in(tree, command)
            for values, value in zip(times[label], (wall, cpu, load), strict=True):
                values.append(value)
    return {label: summary(*values) for label, values in times.items()}


# The warm API in a fresh process: the same code runs against either tree (only SearchEngine(folder) with its
# text_vector and query). Each round times the text tower alone (text_vector) and a whole query, new texts each.
WARM_API = """
import json, sys, time
from search import SearchEngine
folder, runs, texts = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
engine = SearchEngine(folder)
for text in ("warm up", "warm up again"):
    engine.query(text, top_k=10)
tower, query = [], []
for i in range(runs):
    t = time.perf_counter()
    engine.text_vector(texts[i % len(texts)] + f" tower {i}")
    tower.append(time.perf_counter() - t)
    t = time.perf_counter()
    engine.query(texts[i % len(texts)] + f" {i}", top_k=10)
    query.append(time.perf_counter() - t)
print(json.dumps({"tower": tower, "query": query, "torch": "torch" in sys.modules}))
"""


def warm_api(sides: dict[str, tuple[Path, Path]], runs: int, rounds: int = 3) -> dict[str, dict]:
    """The warm API of each side (label → (tree, library)) in fresh processes, the sides taking turns over
    ``rounds`` rounds (so that both see the same load), ``runs`` queries each in all."""
    times = {label: {"tower": [], "query": [], "torch": set(), "load": []} for label in sides}
    for _ in range(rounds):
        for label, (tree, folder) in sides.items():
            load = os.getloadavg()[0]
            _, _, result = run_in(tree, [sys.executable, "-c", WARM_API, str(folder), str(max(1, runs // rounds)),
                                         json.dumps(TEXTS)])
            out = json.loads(result.stdout.strip().splitlines()[-1])
            side = times[label]
            side["tower"] += out["tower"]
            side["query"] += out["query"]
            side["torch"].add(out["torch"])
            side["load"] += [load, os.getloadavg()[0]]
    return {label: {**pct(side["query"]), "text_tower": pct(side["tower"]), "torch_imported": any(side["torch"]),
                    "load_avg": round(float(np.mean(side["load"])), 2)} for label, side in times.items()}


def before_tree(rev: str, out: Path) -> Path:
    """The source tree of commit ``rev`` of this repository, extracted once into ``out``."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    tree = out / f"tree-{commit[:12]}"
    if not (tree / "search" / "cli.py").is_file():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def library_of(tree: Path, out: Path, size: int, args) -> Path:
    """A library of ``size`` synthetic rows made by the tree's own code: each release writes its own schema, and
    an older one refuses a newer library."""
    target = out / f"lib-{size}-{tree.name}"
    script = ("import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from query_bench import "
              "build_library; from encoders import ModelSpec, load_encoder; "
              f"build_library(Path({str(target)!r}), load_encoder(ModelSpec.from_options({args.model!r}, "
              f"{args.pretrained!r}, None)), {size})")
    run_in(tree, [sys.executable, "-c", script])
    return target


def side_by_side(tree: Path, folder: Path, out: Path, args) -> dict:
    """Cold `search query` and warm API p50 of the tree ``tree`` (before) against this one (now)."""
    before_library = library_of(tree, out, min(args.sizes), args)
    query = ("query", "a dog on the beach", "--library")
    for side, library in ((tree, before_library), (ROOT, folder)):  # the first query of each exports its tower
        run_in(side, search_command(*query, str(library)))
    entry = {"before_tree": tree.name}
    cli = cold({"before": (tree, search_command(*query, str(before_library))),
                "now": (ROOT, search_command(*query, str(folder)))}, args.cold_runs)
    entry["cold_cli_before"], entry["cold_cli_now"] = cli["before"], cli["now"]
    entry["cold_cli_ratio_before_over_now"] = round(cli["before"]["median_s"] / cli["now"]["median_s"], 3)
    entry["cold_cli_cpu_ratio_before_over_now"] = round(cli["before"]["cpu_median_s"] / cli["now"]["cpu_median_s"], 3)
    api = warm_api({"before": (tree, before_library), "now": (ROOT, folder)}, args.runs)
    entry["warm_api_before"], entry["warm_api_now"] = api["before"], api["now"]
    entry["warm_api_text_tower_p50_saved_ms"] = round(
        api["before"]["text_tower"]["p50_ms"] - api["now"]["text_tower"]["p50_ms"], 2)
    entry["warm_api_p50_saved_ms"] = round(api["before"]["p50_ms"] - api["now"]["p50_ms"], 2)
    entry["warm_api_p50_ratio_before_over_now"] = round(
        entry["warm_api_before"]["p50_ms"] / entry["warm_api_now"]["p50_ms"], 2)
    return entry


def recall_at(scores: np.ndarray, truth: np.ndarray, ks=(1, 5, 10)) -> dict:
    """scores: queries × pictures; truth: the right picture's column for each query."""
    right = scores[np.arange(len(truth)), truth][:, None]
    rank = (scores > right).sum(axis=1)
    return {f"recall@{k}": round(float((rank < k).mean()), 4) for k in ks}


def ensemble_eval(checkpoint: str, data: Path, out: Path) -> dict:
    import csv

    from encoders import PAPER_TEMPLATES, SHORT_TEMPLATES, ModelSpec, load_encoder
    from indexer import OK, Library, index_folders

    encoder = load_encoder(ModelSpec.from_options(None, None, checkpoint))
    folder = out / f"eval-{encoder.fingerprint.id}"
    lib = Library.open(folder, create=True)
    index_folders(lib, encoder, [data / "images"])
    rows = [r for r in lib.store.reads.export_rows(-1, 10**9, vectors=True) if r.status == OK]
    column = {os.path.realpath(r.path): i for i, r in enumerate(rows)}
    images = np.stack([np.frombuffer(r.vector, np.float32) for r in rows])
    with open(data / "captions.csv", newline="", encoding="utf-8") as f:
        items = [r for r in csv.DictReader(f) if os.path.realpath(data / r["filepath"]) in column]
    captions = [r["caption"] for r in items]
    truth = np.array([column[os.path.realpath(data / r["filepath"])] for r in items])

    def embed(texts, templates):
        if not templates:
            return encoder.encode_texts(texts)
        out = np.empty((len(texts), encoder.dim), np.float32)
        for i, text in enumerate(texts):
            mean = encoder.encode_texts([t.format(text) for t in templates]).mean(axis=0)
            out[i] = mean / np.linalg.norm(mean)
        return out

    categories = sorted({r["category"] for r in items})
    cat_truth = np.array([categories.index(r["category"]) for r in items])
    picture_of = images[truth]
    result = {"checkpoint": checkpoint, "data": str(data), "pictures": len(rows), "queries": len(captions),
              "templates": {"paper": len(PAPER_TEMPLATES), "short": len(SHORT_TEMPLATES)}, "retrieval": {},
              "zero_shot_category": {}}
    for name, templates in (("plain", None), ("short", SHORT_TEMPLATES), ("paper", PAPER_TEMPLATES)):
        t = time.perf_counter()
        result["retrieval"][name] = recall_at(embed(captions, templates) @ images.T, truth)
        labels = embed(categories, templates)
        result["zero_shot_category"][name] = round(float(((picture_of @ labels.T).argmax(1) == cat_truth).mean()), 4)
        result["retrieval"][name]["seconds"] = round(time.perf_counter() - t, 1)
        print(name, result["retrieval"][name], "zero-shot category accuracy", result["zero_shot_category"][name],
              flush=True)
    (out / "ensemble_eval.json").write_text(json.dumps(result, indent=1))
    return result


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "query"))
    parser.add_argument("--before", metavar="REV", help="Also run this commit's tree, side by side (cold CLI, warm "
                        "API).")
    parser.add_argument("--stand-in-tokenizer", action="store_true", help="A hub tokenizer (SigLIP's) of the real "
                        "one's size, made here: offline, with random weights.")
    parser.add_argument("--ensemble-eval", metavar="CHECKPOINT", help="Measure --ensemble with this model instead.")
    parser.add_argument("--eval-data", default=str(ROOT.parent / "shared" / "data" / "emoji-twitter"))
    return parser.parse_args()


def text_towers(engine, encoder, runs: int) -> dict:
    """The text towers warm: PyTorch against ONNX Runtime, and how far apart their vectors are."""
    onnx = engine.text_encoder
    torch_times = timed(lambda i: encoder.encode_texts([TEXTS[i % len(TEXTS)] + f" {i}"]), runs)
    onnx_times = timed(lambda i: onnx.encode_texts([TEXTS[i % len(TEXTS)] + f" {i}"]), runs)
    probe = [f"{t} {i}" for i, t in enumerate(TEXTS)]
    cosine = float((onnx.encode_texts(probe) * encoder.encode_texts(probe)).sum(axis=1).min())
    return {"torch": pct(torch_times), "onnx": pct(onnx_times), "min_cosine_onnx_vs_torch": cosine}


def whole_queries(folder: Path, encoder, args, out: Path) -> tuple[dict, object]:
    """The warm API and the cold CLI on the library that was built (the smallest size), and its FAISS index."""
    from search import SearchEngine

    engine = SearchEngine(folder, encoder=encoder)
    engine.query("warm up", top_k=10)
    entry = {"api_text_query": pct(timed(lambda i: engine.query(TEXTS[i % len(TEXTS)] + f" {i}", top_k=10),
                                         args.runs)),
             "api_text_query_under_small_folder": pct(timed(
                 lambda i: engine.query(TEXTS[i % len(TEXTS)] + f" {i}", top_k=10, under="/synthetic/small"),
                 args.runs))}
    if args.before:
        entry.update(side_by_side(before_tree(args.before, out), folder, out, args))
    else:
        entry["cold_cli_now"] = cold({"now": (ROOT, search_command("query", "a dog on the beach", "--library",
                                                                   str(folder)))}, args.cold_runs)["now"]
    return entry, engine.vectors.index


def random_index(size: int, dim: int, rng: np.random.Generator):
    """An exact index of ``size`` random unit vectors, ids 1..size, added 100k at a time."""
    import faiss

    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for start in range(0, size, 100_000):
        n = min(100_000, size - start)
        v = rng.standard_normal((n, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        index.add_with_ids(v, np.arange(start + 1, start + n + 1, dtype=np.int64))
    return index


def faiss_searches(index, size: int, queries: np.ndarray, runs: int) -> dict:
    """FAISS alone, on one thread and on all, unfiltered and with a 1 % id selector."""
    import faiss

    entry = {}
    selector = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.arange(1, size + 1, 100, dtype=np.int64)))
    for threads in (1, os.cpu_count() or 1):
        faiss.omp_set_num_threads(threads)
        entry[f"faiss_{threads}t"] = pct(timed(lambda i: index.search(queries[i:i + 1], 10), runs))
        entry[f"faiss_{threads}t_1pct_selector"] = pct(timed(
            lambda i: index.search(queries[i:i + 1], 10, params=selector), runs))
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return entry


def main() -> None:
    args = arguments()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ensemble_eval:
        ensemble_eval(args.ensemble_eval, Path(args.eval_data), out)
        return

    import faiss

    from encoders import ModelSpec, load_encoder
    from search import SearchEngine

    stand_in = stand_in_tokenizer(args.model, out) if args.stand_in_tokenizer else None
    encoder = load_encoder(ModelSpec.from_options(args.model, args.pretrained, None))
    report = {"bench": "query", "model": f"{args.model} ({args.pretrained})", "dim": encoder.dim,
              "stand_in_tokenizer": stand_in,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "faiss": faiss.__version__, "load_avg_start": os.getloadavg()[0]},
              "sizes": {}}
    smallest = out / f"lib-{min(args.sizes)}"
    build_library(smallest, encoder, min(args.sizes))
    engine = SearchEngine(smallest, encoder=encoder)
    if not engine.prepare_text_tower():
        raise SystemExit(f"the text tower of {args.model} does not run in ONNX Runtime: {engine.text_towers.refusal}")
    report["text_tower"] = text_towers(engine, encoder, args.runs)
    for size in args.sizes:
        rng = np.random.default_rng(1)
        queries = rng.standard_normal((args.runs, encoder.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        if size == min(args.sizes):
            entry, index = whole_queries(smallest, encoder, args, out)
        else:
            entry, index = {}, random_index(size, encoder.dim, rng)
        entry.update(faiss_searches(index, size, queries, args.runs))
        report["sizes"][str(size)] = entry
        index = None  # free the 1M vectors before the next size
    report["cold_cli_help"] = cold({"now": (ROOT, search_command("--help"))}, args.cold_runs)["now"]
    # What reusing open_clip's tokenizer would add to a text query (encoders/text/tokenizer.py).
    report["cold_import_open_clip_tokenizer"] = cold(
        {"now": (ROOT, [sys.executable, "-c", "import open_clip.tokenizer"])}, args.cold_runs)["now"]
    report["machine"]["load_avg_end"] = os.getloadavg()[0]
    (out / "result.json").write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(report: dict) -> None:
    tt = report["text_tower"]
    print(f"model {report['model']}, dim {report['dim']}, {report['machine']['cpus']} CPUs, "
          f"load average {report['machine']['load_avg_start']:.1f} → {report['machine']['load_avg_end']:.1f}")
    print(f"text tower warm      torch p50 {tt['torch']['p50_ms']:8.1f} ms  "
          f"onnx p50 {tt['onnx']['p50_ms']:8.1f} ms  ratio {tt['torch']['p50_ms'] / tt['onnx']['p50_ms']:.2f}  "
          f"(min cosine {tt['min_cosine_onnx_vs_torch']:.6f})")
    for size, e in report["sizes"].items():
        for key, value in e.items():
            load = f"  load {value['load_avg']:.1f}" if isinstance(value, dict) and "load_avg" in value else ""
            if isinstance(value, dict) and "p50_ms" in value:
                tower = f"  (text tower p50 {value['text_tower']['p50_ms']:.2f} ms)" if "text_tower" in value else ""
                print(f"{int(size):>9,}  {key:<36} p50 {value['p50_ms']:8.2f} ms  p95 {value['p95_ms']:8.2f} ms{load}"
                      f"{tower}")
            elif isinstance(value, dict):
                print(f"{int(size):>9,}  {key:<36} {cold_line(value)}")
            else:
                print(f"{int(size):>9,}  {key:<36} {value}")
    print(f"search --help: {cold_line(report['cold_cli_help'])}")
    print(f"import open_clip.tokenizer: {cold_line(report['cold_import_open_clip_tokenizer'])}")


def cold_line(value: dict) -> str:
    return (f"median {value['median_s']:6.2f} s  (min {value['min_s']:.2f}, max {value['max_s']:.2f}, {value['runs']} "
            f"runs; CPU {value['cpu_median_s']:.2f} s; load {value['load_avg']:.1f})")


if __name__ == "__main__":
    main()
