"""Indexing throughput and memory: the encoder's limit vs a plain open_clip loop vs `search index`.

One command from a fresh clone (after `pip install -e .`):

    python bench/index_bench.py                 # 300 JPEGs 4000×3000 + 300 openclipart PNGs, the default model
    python bench/index_bench.py --jpegs 60 --pngs 60 --memory-small 200 --memory-large 2000   # quicker
    # issue 16: the new default on its chosen path, on camera-like JPEGs, against the old default as it ran
    python bench/index_bench.py --jpegs 60 --rounds 3 --skip png,memory,fast --camera \
        --against ViT-B-32:fp32-eager:plain

It builds a deterministic photo-like corpus (openclipart pictures pasted on textured,
noisy backgrounds, saved as 12-megapixel JPEGs at quality 92 with EXIF orientation tags
and dates; with --camera, each also carries a 1920×1440 copy of itself as an MPF preview,
as cameras write them, which the decoder uses instead of the picture), and a deterministic
sample of the openclipart PNG folder, then measures with `--pretrained none` (random
weights, and for a model whose tokenizer comes from the Hugging Face hub, such as the
SigLIP 2 default, a stand-in tokenizer in a hub cache of the run's own, since neither can
be downloaded here: the image path's cost does not depend on them):

  (a) the image encoder alone on pre-made inputs (the limit), on the inference path `search index`
      takes (encoders/inference.py: the one chosen on this machine, measured once in this run, or
      --inference): PyTorch, bf16 autocast, or the tower exported to ONNX Runtime;
  (b) a plain loop a user would write with open_clip: PIL open → preprocess → encode,
      in a torch DataLoader with one worker per core (bench/plain_loop.py, in a process of
      its own with the user's environment: none of the settings our indexer makes for itself);
  (c) `search index` (a subprocess, timed by its own summary: model loading excluded as in (b)).

in --rounds rounds of (b), (c) between two (a) measurements, and prints each round's ratios
(c)/(a) and (c)/(b) and their medians. With --against MODEL:PATH:plain|camera, every round also
runs (c') `search index` with that model, path and JPEGs right after (c), with its own (a'), and
prints (c)/(c'), the pipelines' pictures/s against each other. Then the peak memory (PSS of the
whole process tree, workers included) of (c) at --memory-small and --memory-large pictures, and
the model's image tower as built (fp32) against faster CPU paths (bf16 autocast, the ONNX export
`search index` makes, torch.compile, int8) with their speed and cosine agreement with fp32.
Results also go to OUT/result.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# (a) measures our encoder, which sets this OpenMP wait policy for itself (encoders/encoder.py); it must be
# set before torch is imported. (b), a user's own script, runs with the user's setting, if any.
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from machine import cpu_summary  # noqa: E402
from plain_loop import cpu_seconds  # noqa: E402  (imports torch: after the line above)

CLIPART = "/usr/share/openclipart/png"
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from camera_helpers import camera_jpeg  # noqa: E402  (the tests' camera JPEGs and hub stand-ins: one way to make them)
from family_helpers import hub_snapshot, save_hf_tokenizer  # noqa: E402

CORPUS_VERSION = 2
PREVIEW = (1920, 1440)  # the MPF preview cameras embed in a 4000×3000 JPEG (--camera)


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
               quality: int = 92, preview: tuple[int, int] | None = None) -> None:
    """A photo-like JPEG; with ``preview``, written as a camera writes it: that size of it embedded in MPF."""
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
    orientation = (1, 6, 3, 8)[index % 4]  # as stored, 90° CW, 180°, 90° CCW
    exif = Image.Exif()
    exif[0x0132] = f"2021:{1 + index % 12:02d}:{1 + index % 28:02d} 12:00:00"
    if preview is None:
        exif[0x0112] = orientation
        canvas.save(path, "JPEG", quality=quality, exif=exif.tobytes())
    else:
        path.write_bytes(camera_jpeg(canvas, canvas.resize(preview, Image.LANCZOS), orientation=orientation,
                                     quality=quality, exif=exif))


def build_corpus(out: Path, jpegs: int, pngs: int, width: int = 4000, height: int = 3000,
                 quality: int = 92, name: str = "corpus", preview: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """OUT/NAME/jpeg (the photos; with ``preview``, camera-like) and OUT/NAME/png (symlinks to a deterministic
    clipart sample); cached."""
    pictures = clipart_files()
    if not pictures:
        sys.exit(f"no PNGs under {CLIPART}: install the Debian package openclipart-png")
    root = out / name
    jpeg_dir, png_dir = root / "jpeg", root / "png"
    stamp = root / "manifest.json"
    manifest = {"version": CORPUS_VERSION, "jpegs": jpegs, "pngs": pngs, "size": [width, height], "q": quality,
                "preview": list(preview) if preview else None}
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest:
        return jpeg_dir, png_dir
    shutil.rmtree(root, ignore_errors=True)
    jpeg_dir.mkdir(parents=True)
    png_dir.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(jpegs):
        make_photo(jpeg_dir / f"photo_{i:05d}.jpg", i, pictures, width, height, quality, preview)
        if i % 500 == 499 or (width * height > 4e6 and i % 50 == 49):
            print(f"  corpus: {i + 1}/{jpegs} photos ({time.perf_counter() - started:.0f}s)", flush=True)
    sample = random.Random(7).sample(pictures, min(pngs, len(pictures))) if pngs >= 0 else pictures
    for i, src in enumerate(sorted(sample)):
        os.symlink(src, png_dir / f"{i:05d}_{os.path.basename(src)}")
    stamp.write_text(json.dumps(manifest))
    return jpeg_dir, png_dir


# -- what is measured ---------------------------------------------------------------------------

STAND_IN_WORDS = "a photo picture of the cat dog tree house car beach mountain city night people".split()


def stand_in_tokenizer(model: str, root: Path) -> str | None:
    """Random weights need no download, but a SigLIP model's tokenizer does (open_clip fetches it from the Hugging
    Face hub), so offline such a model does not load. A small stand-in trained here takes its place, in a hub cache
    under ``root``, for this process and every process it starts: indexing embeds pictures only, and what it costs
    does not depend on the tokenizer. Returns the hub repo it stands in for, or None (no hub tokenizer)."""
    import open_clip
    from huggingface_hub import constants

    repo = (open_clip.get_model_config(model) or {}).get("text_cfg", {}).get("hf_tokenizer_name")
    if not repo:
        return None
    cache = root / "hub"
    # Before transformers is imported (it reads where the cache is once), and for the processes started later.
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(cache), True
    save_hf_tokenizer(hub_snapshot(cache, repo, missing=["config.json"]), STAND_IN_WORDS, vocab_size=100)
    return repo


@dataclass
class Setup:
    """One way of indexing the JPEGs: a model, its image tower's inference path, plain or camera-like files."""

    model: str
    inference: str | None  # forced (`search index --inference`), or None: the path `search index` chooses here
    camera: bool  # the JPEGs carry a 1920×1440 MPF preview, as cameras write them
    folder: Path | None = None  # the JPEGs (set once the corpus is built)
    files: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Setup:
        """MODEL:PATH:plain|camera; PATH 'chosen' for the one `search index` chooses."""
        try:
            model, inference, kind = text.split(":")
        except ValueError:
            raise SystemExit(f"--against {text!r}: expected MODEL:PATH:plain|camera") from None
        if kind not in ("plain", "camera"):
            raise SystemExit(f"--against {text!r}: the JPEGs are plain or camera, not {kind!r}")
        return cls(model, None if inference == "chosen" else inference, kind == "camera")

    @property
    def index_options(self) -> list[str]:
        return ["--inference", self.inference] if self.inference else []

    def label(self, encoder) -> str:
        how = "" if self.inference else " (chosen)"
        return f"{self.model} on {encoder.inference}{how}, {'camera-like' if self.camera else 'plain'} JPEGs"


def image_tower(setup: Setup, scratch: Path):
    """(a)'s encoder: the model's image tower on the path `search index` takes for it, by the same code (the
    forced path, else the one chosen on this machine: an ``OnnxImageEncoder`` exported beside a scratch
    library where ONNX is chosen)."""
    from encoders import ModelSpec, load_encoder
    from encoders.inference import image_encoder

    library = Path(tempfile.mkdtemp(dir=scratch, prefix="library-"))
    return image_encoder(load_encoder(ModelSpec.from_options(setup.model, "none", None)), None, setup.inference,
                         library)


def measure_encoder(encoder, batch_size: int, seconds: float) -> dict:
    """(a): the encoder on pre-made pictures (the model's input array), as the indexer calls it."""
    import torch

    batch = torch.randn(batch_size, 3, *encoder.image_size, generator=torch.Generator().manual_seed(0)).numpy()
    return _timed(lambda: encoder.encode_images(batch), batch_size, seconds)


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
    """``encoder`` as built (fp32 eager) against its image tower on faster CPU paths, each with its speed and
    cosine agreement with fp32 (bf16 and ONNX are among the paths `search index` chooses from; compile and int8
    are not)."""
    import torch

    x = torch.randn(batch_size, 3, *encoder.image_size, generator=torch.Generator().manual_seed(1))
    reference = encoder.encode_images(x)
    results = {"fp32": measure_encoder(encoder, batch_size, seconds)}
    if "bf16" in which:
        def bf16():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return encoder.model.encode_image(x, normalize=True).float().numpy()

        results["bf16_autocast"] = {**_timed(bf16, batch_size, seconds),
                                    "min_cosine_vs_fp32": cosine(reference, bf16())}
    if "onnx" in which:
        results["onnxruntime"] = _measure_onnx(encoder, x, reference, seconds)
    if "compile" in which:
        results["torch_compile"] = _measure_compile(encoder, x, reference, seconds)
    if "int8" in which:
        results["int8_dynamic"] = _measure_int8(encoder, x, reference, seconds)
    return results


def _timed(fn, n: int, seconds: float) -> dict:
    fn()  # warm-up
    done, started, cpu = 0, time.perf_counter(), cpu_seconds()
    while done < 2 * n or time.perf_counter() - started < seconds:
        fn()
        done += n
    wall = time.perf_counter() - started
    return {"pictures": done, "seconds": wall, "rate": done / wall, "cpu_s_per_picture": (cpu_seconds() - cpu) / done}


def export_onnx(encoder, folder: Path):
    """(the image tower exported into ``folder``, checked and opened as `search index` does beside a library, None),
    or (None, why not)."""
    from encoders.onnx.export import ExportRefused
    from encoders.onnx.image import export_image_tower
    from encoders.onnx.runtime import onnx_available

    if not onnx_available(export=True):
        return None, "the onnx and onnxruntime packages are not installed"
    try:
        return export_image_tower(encoder, folder), None
    except ExportRefused as e:
        return None, str(e)


def _measure_onnx(encoder, x, reference, seconds: float) -> dict:
    """The image tower exported and run as `search index` does on its 'onnx' path (encoders/onnx/image.py)."""
    folder = Path(tempfile.mkdtemp(prefix="index-bench-onnx-"))
    try:
        started = time.perf_counter()
        onnx, refused = export_onnx(encoder, folder)
        export_s = time.perf_counter() - started
        if onnx is None:
            return {"skipped": refused}
        return {**measure_encoder(onnx, len(x), seconds), "export_seconds": export_s,
                "min_cosine_vs_fp32": cosine(reference, onnx.encode_images(x.numpy()))}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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

    from encoders.machine import NATIVE_BF16_FLAGS, cpu_flags, cpu_model

    return {"cpu": cpu_model(), "bf16_flags": sorted(cpu_flags() & set(NATIVE_BF16_FLAGS)),
            "summary": cpu_summary(), "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
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


def measure_speed(setups: list[Setup], encoders: list, args, cores: int) -> dict:
    """(a), (b), (c) on the JPEGs, in rounds: a shared 2-core VM drifts by tens of percent within minutes
    (the same (a) measured 10.6 and 14.2 pictures/s two minutes apart), so each round's (b) and (c) run
    back to back between two (a) measurements and are compared with those; the summary is the median
    of the rounds' ratios, every round is printed and kept. With a second setup (--against), its (c') runs
    right after (c) in every round, compared with its own (a') and with (c)."""
    main = setups[0]
    marks = ["", "'"]
    rounds = []
    a_before = [measure_encoder(encoder, args.batch_size, args.encoder_seconds) for encoder in encoders]
    for mark, a in zip(marks, a_before, strict=False):
        print(f"(a{mark}) encoder alone       {fmt(a)}", flush=True)
    for number in range(1, args.rounds + 1):
        load = os.getloadavg()[0]
        b = measure_plain_loop(main.files, main.model, args.batch_size, cores)
        print(f"(b) plain open_clip loop {fmt(b)}", flush=True)
        if args.passive_baseline:
            b_passive = measure_plain_loop(main.files, main.model, args.batch_size, cores, omp_wait_policy="PASSIVE")
            print(f"(b') the same, PASSIVE   {fmt(b_passive)}", flush=True)
        c = []
        for mark, setup in zip(marks, setups, strict=False):
            c.append(measure_search_index(setup.folder, setup.model, setup.index_options))
            print(f"(c{mark}) search index       {fmt(c[-1])}", flush=True)
        a_after = [measure_encoder(encoder, args.batch_size, args.encoder_seconds) for encoder in encoders]
        for mark, a in zip(marks, a_after, strict=False):
            print(f"(a{mark}) encoder alone       {fmt(a)}", flush=True)
        a_rate = [(before["rate"] + after["rate"]) / 2 for before, after in zip(a_before, a_after, strict=True)]
        a_cpu = [(before["cpu_s_per_picture"] + after["cpu_s_per_picture"]) / 2
                 for before, after in zip(a_before, a_after, strict=True)]
        rounds.append({"a": [a_before, a_after], "b": b, "c": c, "c_over_a": c[0]["rate"] / a_rate[0],
                       "c_over_b": c[0]["rate"] / b["rate"], "cpu_a_over_c": a_cpu[0] / c[0]["cpu_s_per_picture"],
                       "load_at_start": load})
        extra = ""
        if args.passive_baseline:
            rounds[-1] |= {"b_passive": b_passive, "c_over_b_passive": c[0]["rate"] / b_passive["rate"]}
            extra = f", (c)/(b') = {rounds[-1]['c_over_b_passive']:.2f}"
        if len(setups) > 1:
            # CPU per picture as well: on a busy machine the wall rates measure the share of the cores each
            # process tree got (a pipeline of several processes gets more than (a)'s one), CPU the work done.
            rounds[-1] |= {"against_c_over_a": c[1]["rate"] / a_rate[1],
                           "c_over_against_c": c[0]["rate"] / c[1]["rate"],
                           "against_cpu_a_over_c": a_cpu[1] / c[1]["cpu_s_per_picture"],
                           "cpu_against_c_over_c": c[1]["cpu_s_per_picture"] / c[0]["cpu_s_per_picture"]}
            extra += (f", (c')/(a') = {rounds[-1]['against_c_over_a']:.2f}, "
                      f"(c)/(c') = {rounds[-1]['c_over_against_c']:.2f}, CPU per picture (c')/(c) = "
                      f"{rounds[-1]['cpu_against_c_over_c']:.2f}")
        print(f"round {number}: (c)/(a) = {rounds[-1]['c_over_a']:.2f}, (c)/(b) = {rounds[-1]['c_over_b']:.2f}"
              f"{extra}, CPU per picture (a)/(c) = {rounds[-1]['cpu_a_over_c']:.2f} ((c)'s decode workers: "
              f"{c[0]['decode_cpu_s_per_picture'] * 1000:.0f} ms); load {load:.2f} at its start", flush=True)
        a_before = a_after
    keys = [key for key in ("c_over_a", "c_over_b", "cpu_a_over_c", "c_over_b_passive", "against_c_over_a",
                            "c_over_against_c", "against_cpu_a_over_c", "cpu_against_c_over_c") if key in rounds[0]]
    summary = {key: float(np.median([r[key] for r in rounds])) for key in keys}
    print(f"JPEGs, median of {len(rounds)} rounds: (c)/(a) = {summary['c_over_a']:.2f} (target ≥ 0.85), "
          f"(c)/(b) = {summary['c_over_b']:.2f} (target ≥ 2); CPU per picture (a)/(c) = "
          f"{summary['cpu_a_over_c']:.2f}", flush=True)
    if args.passive_baseline:
        print(f"  with our OpenMP setting given to the plain loop: (c)/(b') = {summary['c_over_b_passive']:.2f}",
              flush=True)
    if len(setups) > 1:
        print(f"  against {setups[1].label(encoders[1])}: (c')/(a') = {summary['against_c_over_a']:.2f}, CPU per "
              f"picture (a')/(c') = {summary['against_cpu_a_over_c']:.2f}; pipeline pictures/s (c)/(c') = "
              f"{summary['c_over_against_c']:.2f} (issue 16's target ≥ 2), CPU per picture (c')/(c) = "
              f"{summary['cpu_against_c_over_c']:.2f}", flush=True)
    return {"rounds": rounds, **summary}


def arguments(argv: list[str] | None) -> argparse.Namespace:
    from encoders.spec import default_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "out" / "index")
    parser.add_argument("--jpegs", type=int, default=300, help="12 MP photo-like JPEGs to build and index")
    parser.add_argument("--camera", action="store_true",
                        help="the JPEGs carry a 1920×1440 MPF preview, as cameras write them (the decoder uses it)")
    parser.add_argument("--pngs", type=int, default=300, help="openclipart PNGs to index (-1: the whole folder)")
    parser.add_argument("--model", default=default_model().model, help="default: the default model on this machine")
    parser.add_argument("--inference", help="force this image tower path, in (a) and (c) (`search index "
                                            "--inference`); default: the one `search index` chooses here")
    parser.add_argument("--against", metavar="MODEL:PATH:plain|camera", type=Setup.parse,
                        help="also index with this model, path ('chosen': as `search index` chooses) and JPEGs in "
                             "every round, and compare: e.g. ViT-B-32:fp32-eager:plain, the default before issue 16")
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


def measure_pngs(setup: Setup, png_dir: Path, args, cores: int) -> dict:
    """The openclipart PNGs: (b) the plain loop against (c) `search index`."""
    pngs = sorted(str(p) for p in png_dir.iterdir())
    b = measure_plain_loop(pngs, setup.model, args.batch_size, cores)
    print(f"PNG (b) plain loop       {fmt(b)}", flush=True)
    c = measure_search_index(png_dir, setup.model, setup.index_options)
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
    scratch = Path(tempfile.mkdtemp(prefix="index-bench-"))
    # The path choice is measured once in this run (in (a)'s process) and every `search index` run takes it from
    # this cache, as a user's runs take theirs: (a) and (c) run the same path.
    os.environ["XDG_CACHE_HOME"] = str(scratch / "cache")
    try:
        return run(args, skip, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def path_choices() -> list[dict]:
    """This run's cached path choices (encoders/inference.py): one per model, made in (a)'s process, unless a
    `search index` run did not find it and measured again."""
    from encoders.inference import cache_file

    try:
        entries = json.loads(cache_file().read_text())
    except OSError:  # every path was forced: nothing chosen
        return []
    return [{key: entry[key] for key in ("architecture", "path", "images_per_second", "kept")}
            for entry in entries.values()]


def run(args, skip: set[str], scratch: Path) -> int:
    from encoders import ModelSpec, load_encoder

    result: dict = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    print(f"machine: {result['machine']}", flush=True)
    setups = [Setup(args.model, args.inference, args.camera), *([args.against] if args.against else [])]
    stand_ins = {repo for setup in setups if (repo := stand_in_tokenizer(setup.model, scratch))}
    print(f"models: random weights{', a stand-in tokenizer for ' + ', '.join(sorted(stand_ins)) if stand_ins else ''}"
          ": the image path's cost does not depend on them", flush=True)
    result["stand_in_tokenizers"] = sorted(stand_ins)
    corpora = {camera: build_corpus(args.out, args.jpegs, args.pngs, name="corpus-camera" if camera else "corpus",
                                    preview=PREVIEW if camera else None)
               for camera in sorted({setup.camera for setup in setups})}
    for setup in setups:
        setup.folder = corpora[setup.camera][0]
        setup.files = sorted(str(p) for p in setup.folder.iterdir())
    png_dir = corpora[setups[0].camera][1]
    result["corpus"] = {}
    for camera, (jpeg_dir, _) in corpora.items():
        sizes = [os.path.getsize(p) for p in jpeg_dir.iterdir()]
        kind = "camera-like (1920×1440 MPF preview)" if camera else "plain"
        print(f"corpus: {len(sizes)} {kind} JPEGs 4000×3000 (mean {np.mean(sizes) / 2**20:.1f} MB), "
              f"{len(os.listdir(png_dir))} PNGs", flush=True)
        result["corpus"]["camera" if camera else "plain"] = {"jpegs": len(sizes),
                                                             "mean_jpeg_mb": float(np.mean(sizes) / 2**20)}
    cores = len(os.sched_getaffinity(0))
    if args.pngs == 0:
        skip.add("png")
    if "speed" not in skip or "png" not in skip:
        encoders = [image_tower(setup, scratch) for setup in setups]
        result["setups"] = [setup.label(encoder) for setup, encoder in zip(setups, encoders, strict=True)]
        for mark, label in zip(["(c), (a)", "(c'), (a')"], result["setups"], strict=False):
            print(f"{mark}: {label}", flush=True)
        if "speed" not in skip:
            result["jpeg"] = measure_speed(setups, encoders, args, cores)
        if "png" not in skip:
            result["png"] = measure_pngs(setups[0], png_dir, args, cores)
        del encoders
        result["path_choices"] = path_choices()
        for choice in result["path_choices"]:
            print(f"path choice: {choice['architecture']} → {choice['path']} (probe pictures/s "
                  f"{choice['images_per_second']}, within the bound: {', '.join(choice['kept'])})", flush=True)
    if "fast" not in skip and args.fast_paths:
        as_built = load_encoder(ModelSpec.from_options(args.model, "none", None))
        fast = measure_fast_paths(as_built, args.batch_size, args.encoder_seconds, args.fast_paths.split(","))
        result["fast_paths"] = fast
        for name, value in fast.items():
            print(f"fast path {name:14s} {fmt(value)}", flush=True)
    if "memory" not in skip:
        result["memory"] = measure_memory(args)
    result["load_average_at_end"] = os.getloadavg()
    (args.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {args.out / 'result.json'}; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
