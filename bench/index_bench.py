"""Indexing throughput and memory: the encoder's limit vs a plain open_clip loop vs `search index`.

One command from a fresh clone (after `pip install -e .`):

    python bench/index_bench.py                 # 300 JPEGs 4000×3000 + 300 openclipart PNGs, ViT-B-32
    python bench/index_bench.py --jpegs 60 --pngs 60 --memory-small 200 --memory-large 2000   # quicker

It builds a deterministic photo-like corpus (openclipart pictures pasted on textured,
noisy backgrounds, saved as 12-megapixel JPEGs at quality 92 with EXIF orientation tags
and dates), and a deterministic sample of the openclipart PNG folder, then measures with
ViT-B-32 `--pretrained none` (random weights: speed does not depend on them):

  (a) the image encoder alone on pre-made tensors (the limit);
  (b) a plain loop a user would write with open_clip: PIL open → preprocess → encode,
      in a torch DataLoader with one worker per core (bench/plain_loop.py, in a process of
      its own with the user's environment: none of the settings our indexer makes for itself);
  (c) `search index` (a subprocess, timed by its own summary: model loading excluded as in (b)).

in --rounds rounds of (b), (c) between two (a) measurements, and prints each round's ratios
(c)/(a) and (c)/(b) and their medians. Then the peak memory (PSS of the whole process
tree, workers included) of (c) at --memory-small and --memory-large pictures, and the
faster CPU inference paths (bf16 autocast, ONNX Runtime, torch.compile, int8) with their
speed and cosine agreement with fp32 PyTorch. Results also go to OUT/result.json.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

# (a) measures our encoder, which sets this OpenMP wait policy for itself (encoders/encoder.py); it must be
# set before torch is imported. (b), a user's own script, runs with the user's setting, if any.
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from plain_loop import cpu_seconds  # noqa: E402  (imports torch: after the line above)

CLIPART = "/usr/share/openclipart/png"
HERE = Path(__file__).resolve().parent
CORPUS_VERSION = 2


# -- the corpus ---------------------------------------------------------------------------------


def clipart_files(folder: str = CLIPART) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "**", "*.png"), recursive=True))


_GRAIN: dict[tuple[int, int], np.ndarray] = {}


def _grain(width: int, height: int) -> np.ndarray:
    """Sensor-like fine noise, made once per size (deterministic) and shifted per picture."""
    if (width, height) not in _GRAIN:
        _GRAIN[(width, height)] = np.random.default_rng(0).normal(0, 7, (height, width, 1)).astype(np.int16)
    return _GRAIN[(width, height)]


def _texture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like background: smooth colour fields, mid-scale blotches and fine grain."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), dtype=np.int16)
    mid = rng.integers(-40, 40, (height // 16, width // 16, 3)).astype(np.int16)
    mid = np.asarray(Image.fromarray((mid + 128).astype(np.uint8)).resize((width, height), Image.BILINEAR),
                     dtype=np.int16) - 128
    fine = np.roll(_grain(width, height), (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1))
    return Image.fromarray(np.clip(base + mid + fine, 0, 255).astype(np.uint8))


def make_photo(path: Path, index: int, pictures: list[str], width: int = 4000, height: int = 3000,
               quality: int = 92) -> None:
    rng = np.random.default_rng(1000 + index)
    canvas = _texture(rng, width, height)
    for _ in range(int(rng.integers(1, 4))):
        choice = int(rng.integers(len(pictures)))
        while True:  # openclipart holds one 623-megapixel PNG: take the next picture instead
            try:
                art = Image.open(pictures[choice]).convert("RGBA")
                break
            except Image.DecompressionBombError:
                choice = (choice + 1) % len(pictures)
        scale = float(rng.uniform(0.25, 0.6)) * min(width, height) / max(art.size)
        art = art.resize((max(1, int(art.width * scale)), max(1, int(art.height * scale))), Image.BICUBIC)
        x = int(rng.integers(0, max(1, width - art.width)))
        y = int(rng.integers(0, max(1, height - art.height)))
        canvas.paste(art, (x, y), art)
    exif = Image.Exif()
    exif[0x0112] = (1, 6, 3, 8)[index % 4]  # orientation: as stored, 90° CW, 180°, 90° CCW
    exif[0x0132] = f"2021:{1 + index % 12:02d}:{1 + index % 28:02d} 12:00:00"
    canvas.save(path, "JPEG", quality=quality, exif=exif.tobytes())


def build_corpus(out: Path, jpegs: int, pngs: int, width: int = 4000, height: int = 3000,
                 quality: int = 92, name: str = "corpus") -> tuple[Path, Path]:
    """OUT/NAME/jpeg (the photos) and OUT/NAME/png (symlinks to a deterministic clipart sample); cached."""
    pictures = clipart_files()
    if not pictures:
        sys.exit(f"no PNGs under {CLIPART}: install the Debian package openclipart-png")
    root = out / name
    jpeg_dir, png_dir = root / "jpeg", root / "png"
    stamp = root / "manifest.json"
    manifest = {"version": CORPUS_VERSION, "jpegs": jpegs, "pngs": pngs, "size": [width, height], "q": quality}
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return jpeg_dir, png_dir
    shutil.rmtree(root, ignore_errors=True)
    jpeg_dir.mkdir(parents=True)
    png_dir.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(jpegs):
        make_photo(jpeg_dir / f"photo_{i:05d}.jpg", i, pictures, width, height, quality)
        if i % 500 == 499 or (width * height > 4e6 and i % 50 == 49):
            print(f"  corpus: {i + 1}/{jpegs} photos ({time.perf_counter() - started:.0f}s)", flush=True)
    sample = random.Random(7).sample(pictures, min(pngs, len(pictures))) if pngs >= 0 else pictures
    for i, src in enumerate(sorted(sample)):
        os.symlink(src, png_dir / f"{i:05d}_{os.path.basename(src)}")
    stamp.write_text(json.dumps(manifest))
    return jpeg_dir, png_dir


# -- measurements -------------------------------------------------------------------------------


def measure_encoder(encoder, batch_size: int, seconds: float, autocast_dtype=None) -> dict:
    """(a): the encoder on pre-made tensors, as the indexer calls it."""
    import torch

    batch = torch.randn(batch_size, 3, *encoder.image_size, generator=torch.Generator().manual_seed(0))
    encoder.encode_images(batch[:2])  # warm-up
    done, started, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < 2 * batch_size or time.perf_counter() - started < seconds:
        if autocast_dtype is None:
            encoder.encode_images(batch)
        else:
            with torch.inference_mode(), torch.autocast("cpu", dtype=autocast_dtype):
                encoder.model.encode_image(batch, normalize=True)
        done += batch_size
    wall = time.perf_counter() - started
    return {"pictures": done, "seconds": wall, "rate": done / wall, "cpu_s_per_picture": (cpu_seconds() - cpu) / done}


def measure_plain_loop(files: list[str], model: str, batch_size: int, workers: int,
                       omp_wait_policy: str | None = USER_OMP_WAIT_POLICY) -> dict:
    """(b): what a user writes with open_clip and a DataLoader (bench/plain_loop.py), run as the user runs it:
    its own process, the environment without the settings our indexer makes for itself. With
    `omp_wait_policy`, it gets that OpenMP wait policy instead (PASSIVE: the one our encoder sets)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if omp_wait_policy:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("\n".join(files))
        listing.flush()
        command = [sys.executable, str(HERE / "plain_loop.py"), listing.name, "--model", model,
                   "--batch-size", str(batch_size), "--workers", str(workers)]
        process = subprocess.run(command, env=env, capture_output=True, text=True)
    if process.returncode != 0:
        raise SystemExit(f"the plain loop failed ({process.returncode}):\n{process.stderr[-2000:]}")
    run = json.loads(process.stdout.strip().splitlines()[-1])
    return {"pictures": run["pictures"], "seconds": run["seconds"], "rate": run["pictures"] / run["seconds"],
            "cpu_s_per_picture": run["cpu_seconds"] / run["pictures"], "omp_wait_policy": run["omp_wait_policy"]}


def _tree_pss(pid: int) -> int:
    import psutil

    total = 0
    try:
        main = psutil.Process(pid)
        for p in [main, *main.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                total += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def search_command() -> list[str]:
    script = Path(sys.executable).with_name("search")
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


def measure_search_index(folder: Path, model: str, extra: list[str] = (), library: Path | None = None,
                         sample_memory: bool = False) -> dict:
    """(c): `search index` in a subprocess; its summary gives the embedding time. With `sample_memory`, the
    PSS of its process tree is sampled every 0.25 s: never during a speed run, because reading PSS walks the
    page tables of a 1.5 GB process (~110 ms of CPU a sample here) and would take a third of a core from it."""
    own = library is None
    library = library or Path(tempfile.mkdtemp(prefix="index-bench-lib-"))
    command = [*search_command(), "index", str(folder), "--library", str(library), "--model", model,
               "--pretrained", "none", "--json", *extra]
    peak, stop = [0], threading.Event()
    cpu = cpu_seconds()
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_pss(process.pid))
            stop.wait(0.25)

    if sample_memory:
        try:
            import psutil  # noqa: F401

            threading.Thread(target=sample, daemon=True).start()
        except ImportError:
            pass
    out, err = process.communicate()
    wall = time.perf_counter() - started
    stop.set()
    if process.returncode != 0:
        raise SystemExit(f"search index failed ({process.returncode}):\n{err[-2000:]}")
    summary = json.loads(out.strip().splitlines()[-1])
    if own:
        shutil.rmtree(library, ignore_errors=True)
    embedded = summary["embedded"] or 1
    # CPU of the run itself (main process + decode workers), as reported by the indexer: model loading
    # and imports are left out, as they are for (a) and (b)
    run_cpu = summary.get("cpu_seconds") or (cpu_seconds() - cpu)
    return {"pictures": summary["embedded"], "seconds": summary["seconds"], "rate": embedded / summary["seconds"],
            "wall_with_startup": wall, "cpu_s_per_picture": run_cpu / embedded,
            "decode_cpu_s_per_picture": summary.get("decode_cpu_seconds", 0.0) / embedded,
            "cpu_s_per_picture_with_startup": (cpu_seconds() - cpu) / embedded,
            "peak_pss_mb": peak[0] / 2**20 if peak[0] else None, "failed": summary["failed"]}


# -- faster CPU inference paths -----------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def measure_fast_paths(encoder, batch_size: int, seconds: float, which: list[str]) -> dict:
    import torch

    x = torch.randn(batch_size, 3, *encoder.image_size, generator=torch.Generator().manual_seed(1))
    reference = encoder.encode_images(x)
    results = {"fp32": measure_encoder(encoder, batch_size, seconds)}
    if "bf16" in which:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            got = encoder.model.encode_image(x, normalize=True).float().numpy()
        results["bf16_autocast"] = {**measure_encoder(encoder, batch_size, seconds, torch.bfloat16),
                                    "min_cosine_vs_fp32": cosine(reference, got)}
    if "onnx" in which:
        results["onnxruntime"] = _measure_onnx(encoder, x, reference, seconds)
    if "compile" in which:
        results["torch_compile"] = _measure_compile(encoder, x, reference, seconds)
    if "int8" in which:
        results["int8_dynamic"] = _measure_int8(encoder, x, reference, seconds)
    return results


def _timed(fn, n: int, seconds: float) -> dict:
    fn()
    done, started, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < 2 * n or time.perf_counter() - started < seconds:
        fn()
        done += n
    wall = time.perf_counter() - started
    return {"pictures": done, "seconds": wall, "rate": done / wall, "cpu_s_per_picture": (cpu_seconds() - cpu) / done}


def _measure_onnx(encoder, x, reference, seconds: float) -> dict:
    try:
        import onnxruntime as ort
        import torch

        from encoders.onnx.export import unfused_attention
    except ImportError as e:
        return {"skipped": f"onnxruntime not installed ({e})"}

    class Visual(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model.encode_image(pixels, normalize=True)

    path = Path(tempfile.mkdtemp(prefix="index-bench-onnx-")) / "visual.onnx"
    try:
        started = time.perf_counter()
        with unfused_attention():
            torch.onnx.export(Visual(encoder.model).eval(), (x,), str(path), input_names=["pixels"],
                              output_names=["features"], dynamic_axes={"pixels": {0: "n"}, "features": {0: "n"}},
                              opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        export_s = time.perf_counter() - started
        feed = {"pixels": x.numpy()}
        got = session.run(None, feed)[0]
        result = _timed(lambda: session.run(None, feed), len(x), seconds)
        return {**result, "min_cosine_vs_fp32": cosine(reference, got), "export_seconds": export_s,
                "onnxruntime": ort.__version__}
    except Exception as e:
        return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


def _measure_compile(encoder, x, reference, seconds: float) -> dict:
    import torch

    try:
        started = time.perf_counter()
        compiled = torch.compile(encoder.model.encode_image)
        with torch.inference_mode():
            got = compiled(x, normalize=True).numpy()
        compile_s = time.perf_counter() - started

        def run():
            with torch.inference_mode():
                compiled(x, normalize=True)

        return {**_timed(run, len(x), seconds), "min_cosine_vs_fp32": cosine(reference, got),
                "compile_seconds": compile_s}
    except Exception as e:
        return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def _measure_int8(encoder, x, reference, seconds: float) -> dict:
    """Dynamic int8 quantization of the visual tower's Linear layers (fbgemm on x86)."""
    import copy
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notices
        visual = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder.model.visual), {torch.nn.Linear},
                                                        dtype=torch.qint8)

    def run():
        with torch.inference_mode():
            return torch.nn.functional.normalize(visual(x), dim=-1).numpy()

    return {**_timed(run, len(x), seconds), "min_cosine_vs_fp32": cosine(reference, run())}


# -- the run ------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    model_name = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model_name, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg(),
            "python": sys.version.split()[0]}


def fmt(result: dict) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    text = f"{result['rate']:6.2f} pictures/s  ({result['pictures']} in {result['seconds']:.1f}s, " \
           f"{result['cpu_s_per_picture'] * 1000:.0f} ms CPU/picture)"
    if result.get("peak_pss_mb"):
        text += f"  peak {result['peak_pss_mb']:.0f} MB"
    if "min_cosine_vs_fp32" in result:
        text += f"  cosine≥{result['min_cosine_vs_fp32']:.5f}"
    return text


def measure_speed(encoder, jpegs: list[str], jpeg_dir: Path, args, cores: int) -> dict:
    """(a), (b), (c) on the JPEGs, in rounds: a shared 2-core VM drifts by tens of percent within minutes
    (the same (a) measured 10.6 and 14.2 pictures/s two minutes apart), so each round's (b) and (c) run
    back to back between two (a) measurements and are compared with those; the summary is the median
    of the rounds' ratios, every round is printed and kept."""
    rounds = []
    a_before = measure_encoder(encoder, args.batch_size, args.encoder_seconds)
    print(f"(a) encoder alone        {fmt(a_before)}", flush=True)
    for number in range(1, args.rounds + 1):
        b = measure_plain_loop(jpegs, args.model, args.batch_size, cores)
        print(f"(b) plain open_clip loop {fmt(b)}", flush=True)
        if args.passive_baseline:
            b_passive = measure_plain_loop(jpegs, args.model, args.batch_size, cores, omp_wait_policy="PASSIVE")
            print(f"(b') the same, PASSIVE   {fmt(b_passive)}", flush=True)
        c = measure_search_index(jpeg_dir, args.model)
        print(f"(c) search index         {fmt(c)}", flush=True)
        a_after = measure_encoder(encoder, args.batch_size, args.encoder_seconds)
        print(f"(a) encoder alone        {fmt(a_after)}", flush=True)
        a_rate = (a_before["rate"] + a_after["rate"]) / 2
        a_cpu = (a_before["cpu_s_per_picture"] + a_after["cpu_s_per_picture"]) / 2
        rounds.append({"a": [a_before, a_after], "b": b, "c": c, "c_over_a": c["rate"] / a_rate,
                       "c_over_b": c["rate"] / b["rate"], "cpu_a_over_c": a_cpu / c["cpu_s_per_picture"]})
        passive = ""
        if args.passive_baseline:
            rounds[-1] |= {"b_passive": b_passive, "c_over_b_passive": c["rate"] / b_passive["rate"]}
            passive = f", (c)/(b') = {rounds[-1]['c_over_b_passive']:.2f}"
        print(f"round {number}: (c)/(a) = {rounds[-1]['c_over_a']:.2f}, (c)/(b) = {rounds[-1]['c_over_b']:.2f}"
              f"{passive}, CPU per picture (a)/(c) = {rounds[-1]['cpu_a_over_c']:.2f} ((c)'s decode workers: "
              f"{c['decode_cpu_s_per_picture'] * 1000:.0f} ms)", flush=True)
        a_before = a_after
    keys = ["c_over_a", "c_over_b", "cpu_a_over_c"] + (["c_over_b_passive"] if args.passive_baseline else [])
    summary = {key: float(np.median([r[key] for r in rounds])) for key in keys}
    print(f"JPEGs, median of {len(rounds)} rounds: (c)/(a) = {summary['c_over_a']:.2f} (target ≥ 0.85), "
          f"(c)/(b) = {summary['c_over_b']:.2f} (target ≥ 2); CPU per picture (a)/(c) = "
          f"{summary['cpu_a_over_c']:.2f}", flush=True)
    if args.passive_baseline:
        print(f"  with our OpenMP setting given to the plain loop: (c)/(b') = {summary['c_over_b_passive']:.2f}",
              flush=True)
    return {"rounds": rounds, **summary}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "out" / "index")
    parser.add_argument("--jpegs", type=int, default=300, help="12 MP photo-like JPEGs to build and index")
    parser.add_argument("--pngs", type=int, default=300, help="openclipart PNGs to index (-1: the whole folder)")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--encoder-seconds", type=float, default=20.0, help="length of each (a) measurement")
    parser.add_argument("--rounds", type=int, default=5, help="(a) (b) (c) rounds on the JPEGs; the median counts")
    parser.add_argument("--passive-baseline", action="store_true",
                        help="each round also runs (b) with OMP_WAIT_POLICY=PASSIVE, the setting our encoder makes")
    parser.add_argument("--memory-small", type=int, default=1000)
    parser.add_argument("--memory-large", type=int, default=10000)
    parser.add_argument("--memory-model", default="clipsearch-tiny",
                        help="model of the memory runs (the tiny one keeps a 10k run short; see BENCHMARKS.md)")
    parser.add_argument("--fast-paths", default="bf16,onnx", help="comma list of bf16,onnx,compile,int8 ('' = none)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: speed,png,memory,fast")
    return parser.parse_args(argv)


def measure_pngs(png_dir: Path, args, cores: int) -> dict:
    """The openclipart PNGs: (b) the plain loop against (c) `search index`."""
    pngs = sorted(str(p) for p in png_dir.iterdir())
    b = measure_plain_loop(pngs, args.model, args.batch_size, cores)
    print(f"PNG (b) plain loop       {fmt(b)}", flush=True)
    c = measure_search_index(png_dir, args.model)
    print(f"PNG (c) search index     {fmt(c)}", flush=True)
    png = {"b": b, "c": c, "c_over_b": c["rate"] / b["rate"]}
    print(f"PNGs: (c)/(b) = {png['c_over_b']:.2f}", flush=True)
    return png


def measure_memory(args) -> dict:
    """`search index`'s peak memory on a small and a large folder of 800×600 JPEGs, and their ratio."""
    memory = {}
    for n in (args.memory_small, args.memory_large):
        folder, _ = build_corpus(args.out, n, 0, width=800, height=600, quality=85, name=f"memory-{n}")
        memory[n] = measure_search_index(folder, args.memory_model, sample_memory=True)
        print(f"memory: {n:6d} pictures (800×600 JPEGs, {args.memory_model}) {fmt(memory[n])}", flush=True)
    ratio = memory[args.memory_large]["peak_pss_mb"] / memory[args.memory_small]["peak_pss_mb"]
    print(f"peak memory {args.memory_large} / {args.memory_small} pictures = {ratio:.2f} (target ≤ 1.5)")
    return {str(k): v for k, v in memory.items()} | {"large_over_small": ratio}


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    from encoders import ModelSpec, load_encoder

    result: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {result['machine']}", flush=True)
    jpeg_dir, png_dir = build_corpus(args.out, args.jpegs, args.pngs)
    jpegs = sorted(str(p) for p in jpeg_dir.iterdir())
    sizes = [os.path.getsize(p) for p in jpegs]
    print(f"corpus: {len(jpegs)} JPEGs 4000×3000 (mean {np.mean(sizes) / 2**20:.1f} MB), "
          f"{len(os.listdir(png_dir))} PNGs", flush=True)
    result["corpus"] = {"jpegs": len(jpegs), "mean_jpeg_mb": float(np.mean(sizes) / 2**20),
                        "pngs": len(os.listdir(png_dir))}
    encoder = load_encoder(ModelSpec.from_options(args.model, "none", None))
    cores = len(os.sched_getaffinity(0))
    if "speed" not in skip:
        result["jpeg"] = measure_speed(encoder, jpegs, jpeg_dir, args, cores)
    if "png" not in skip:
        result["png"] = measure_pngs(png_dir, args, cores)
    if "fast" not in skip and args.fast_paths:
        fast = measure_fast_paths(encoder, args.batch_size, args.encoder_seconds, args.fast_paths.split(","))
        result["fast_paths"] = fast
        for name, value in fast.items():
            print(f"fast path {name:14s} {fmt(value)}", flush=True)
    if "memory" not in skip:
        result["memory"] = measure_memory(args)
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {args.out / 'result.json'}; corpus digest "
          f"{hashlib.blake2b(''.join(jpegs).encode(), digest_size=6).hexdigest()}")
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
