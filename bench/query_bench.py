"""Query latency: warm Python API, FAISS at 100k / 1M vectors, and the cold `search query` command.

    python bench/query_bench.py [--sizes 100000 1000000] [--model ViT-B-32 --pretrained none] [--runs 30]

Builds a synthetic library per size (random unit vectors under a real model record, rows
written straight into SQLite; cached in --out), then prints side by side:

- warm API: ``SearchEngine.query(text)`` p50/p95 (PyTorch text tower + filtered/unfiltered FAISS + rows);
- warm text tower: PyTorch vs the exported ONNX tower (what the CLI's fast path runs);
- FAISS alone: exact search p50/p95, unfiltered and with a 1 % id selector (a small folder);
- cold CLI: wall time of a whole `search query "..."` process, fast path (ONNX, no torch)
  vs the plain PyTorch path (SEARCH_NO_FAST_PATH=1), and `search --help`.

Ratios are "plain PyTorch path / ours" (higher is better for us).

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


def timed(fn, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def cold_cli(args: list[str], env: dict, runs: int) -> dict:
    command = [str(Path(sys.executable).with_name("search")), *args]
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT)
        times.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: {result.stderr}")
    a = np.asarray(times)
    # On a busy machine wall time mostly measures the wait for a core; CPU time (user+sys) does not.
    return {"median_s": round(float(np.median(a)), 3), "min_s": round(float(a.min()), 3),
            "max_s": round(float(a.max()), 3), "cpu_median_s": round(float(np.median(cpu)), 3), "runs": runs}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "query"))
    parser.add_argument("--ensemble-eval", metavar="CHECKPOINT", help="Measure --ensemble with this model instead.")
    parser.add_argument("--eval-data", default=str(ROOT.parent / "shared" / "data" / "emoji-twitter"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ensemble_eval:
        ensemble_eval(args.ensemble_eval, Path(args.eval_data), out)
        return

    import faiss

    from encoders import ModelSpec, load_encoder
    from search import SearchEngine
    from search.textonnx import OnnxTextEncoder

    encoder = load_encoder(ModelSpec.from_options(args.model, args.pretrained, None))
    report = {"bench": "query", "model": f"{args.model} ({args.pretrained})", "dim": encoder.dim,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "faiss": faiss.__version__, "load_avg_start": os.getloadavg()[0]},
              "sizes": {}}
    # Text towers, warm.
    torch_times = timed(lambda i: encoder.encode_texts([TEXTS[i % len(TEXTS)] + f" {i}"]), args.runs)
    smallest = out / f"lib-{min(args.sizes)}"
    build_library(smallest, encoder, min(args.sizes))
    engine = SearchEngine(smallest, encoder=encoder)
    engine.prepare_fast_queries()
    onnx = OnnxTextEncoder.for_library(smallest, engine.record.fingerprint)
    onnx_times = timed(lambda i: onnx.encode_texts([TEXTS[i % len(TEXTS)] + f" {i}"]), args.runs)
    probe = [f"{t} {i}" for i, t in enumerate(TEXTS)]
    cosine = float((onnx.encode_texts(probe) * encoder.encode_texts(probe)).sum(axis=1).min())
    report["text_tower"] = {"torch": pct(torch_times), "onnx": pct(onnx_times), "min_cosine_onnx_vs_torch": cosine}

    for size in args.sizes:
        entry: dict = {}
        rng = np.random.default_rng(1)
        queries = rng.standard_normal((args.runs, encoder.dim), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        if size == min(args.sizes):
            folder = smallest
            engine = SearchEngine(folder, encoder=encoder)
            engine.query("warm up", top_k=10)
            entry["api_text_query"] = pct(timed(
                lambda i, engine=engine: engine.query(TEXTS[i % len(TEXTS)] + f" {i}", top_k=10), args.runs))
            entry["api_text_query_under_small_folder"] = pct(timed(
                lambda i, engine=engine: engine.query(TEXTS[i % len(TEXTS)] + f" {i}", top_k=10,
                                                      under="/synthetic/small"),
                args.runs))
            index = engine.vectors.index
            for label, env in (("fast_onnx", {}), ("plain_torch", {"SEARCH_NO_FAST_PATH": "1"})):
                entry[f"cold_cli_{label}"] = cold_cli(["query", "a dog on the beach", "--library", str(folder)], env,
                                                      args.cold_runs)
            entry["cold_cli_ratio_torch_over_fast"] = round(
                entry["cold_cli_plain_torch"]["median_s"] / entry["cold_cli_fast_onnx"]["median_s"], 2)
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(encoder.dim))
            for start in range(0, size, 100_000):
                n = min(100_000, size - start)
                v = rng.standard_normal((n, encoder.dim), dtype=np.float32)
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                index.add_with_ids(v, np.arange(start + 1, start + n + 1, dtype=np.int64))
        small_ids = np.arange(1, size + 1, 100, dtype=np.int64)
        selector = faiss.SearchParameters(sel=faiss.IDSelectorBatch(small_ids))
        for threads in (1, os.cpu_count() or 1):
            faiss.omp_set_num_threads(threads)
            entry[f"faiss_{threads}t"] = pct(timed(lambda i, index=index, queries=queries: index.search(
                queries[i:i + 1], 10), args.runs))
            entry[f"faiss_{threads}t_1pct_selector"] = pct(timed(
                lambda i, index=index, queries=queries, selector=selector: index.search(
                    queries[i:i + 1], 10, params=selector), args.runs))
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        report["sizes"][str(size)] = entry
        index = None  # free the 1M vectors before the next size
    report["cold_cli_help"] = cold_cli(["--help"], {}, args.cold_runs)
    report["machine"]["load_avg_end"] = os.getloadavg()[0]
    (out / "result.json").write_text(json.dumps(report, indent=1))

    tt = report["text_tower"]
    print(f"model {report['model']}, dim {report['dim']}, {report['machine']['cpus']} CPUs, "
          f"load average {report['machine']['load_avg_start']:.1f} → {report['machine']['load_avg_end']:.1f}")
    print(f"text tower warm      torch p50 {tt['torch']['p50_ms']:8.1f} ms  "
          f"onnx p50 {tt['onnx']['p50_ms']:8.1f} ms  ratio {tt['torch']['p50_ms'] / tt['onnx']['p50_ms']:.2f}  "
          f"(min cosine {tt['min_cosine_onnx_vs_torch']:.6f})")
    for size, e in report["sizes"].items():
        for key, value in e.items():
            if isinstance(value, dict) and "p50_ms" in value:
                print(f"{int(size):>9,}  {key:<36} p50 {value['p50_ms']:8.2f} ms  p95 {value['p95_ms']:8.2f} ms")
            elif isinstance(value, dict):
                print(f"{int(size):>9,}  {key:<36} median {value['median_s']:6.2f} s  "
                      f"(min {value['min_s']:.2f}, max {value['max_s']:.2f}, {value['runs']} runs; "
                      f"CPU {value['cpu_median_s']:.2f} s)")
            else:
                print(f"{int(size):>9,}  {key:<36} {value}")
    h = report["cold_cli_help"]
    print(f"search --help: median {h['median_s']:.2f} s (min {h['min_s']:.2f}; CPU {h['cpu_median_s']:.2f} s)")


if __name__ == "__main__":
    main()
