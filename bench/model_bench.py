"""Candidate default models on this machine: image tower speed per inference path, text tower latency, peak memory,
beside their published zero-shot ImageNet and COCO retrieval figures.

    python bench/model_bench.py                       # every candidate, batch 16, best of 3
    python bench/model_bench.py --models ViT-B-32 MobileCLIP2-S0 --batch 32 --runs 5

Random weights (speed does not depend on them; nothing is downloaded) and, for SigLIP models, a stand-in tokenizer
(bench/index_bench.py: their real one comes from the hub; the image tower does not use it). Each model runs in a
process of its own, so its peak memory (ru_maxrss: the model, its paths' copies and export, a batch) is its own.
For each model:

- image tower img/s and CPU ms per picture on every inference path the tower can take here (encoders/inference.py),
  the ONNX export included (exported and checked as `search index` exports it beside a library), each with its
  agreement with fp32-eager on the probe batch (min cosine, same top-10); on a CPU without native bf16, plain bf16
  autocast is measured too (its combinations with the other steps only where it is native: it is emulated here,
  slowly);
- the path this machine would choose (bf16 offered only with native AVX512-BF16/AMX), and its speed-up over
  fp32-eager, measured in the same process;
- text tower ms per query (one query of random token ids at the model's context length: SigLIP2's tokenizers need
  the hub, and token values do not change the cost).

Published figures are zero-shot ImageNet-1k top-1 and MSCOCO 5k text→image R@1 (open_clip's "image retrieval"),
from the sources in PUBLISHED. The 1-minute load average before and after each model is printed beside it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

OPENCLIP = "open_clip docs/openclip_results.csv + openclip_retrieval_results.csv @89fb801"
MOBILECLIP = "apple/ml-mobileclip results/*.jsonl @4144bb1"
SIGLIP2 = "google-research/big_vision big_vision/configs/proj/image_text/README_siglip2.md @1659d42"
PE_CORE = "facebookresearch/perception_models apps/pe/README.md @3e352cc (IN-1k, COCO-T2I columns)"
# model → (pretrained tag, ImageNet top-1 %, COCO text→image R@1 %, source).
PUBLISHED = {
    "ViT-B-32": ("laion2b_s34b_b79k", 66.6, 39.3, OPENCLIP),
    "MobileCLIP2-S0": ("dfndr2b", 71.5, 43.7, MOBILECLIP),
    "ViT-B-32-256": ("datacomp_s34b_b86k", 72.8, 39.9, OPENCLIP),
    "MobileCLIP2-S2": ("dfndr2b", 77.2, 48.8, MOBILECLIP),
    "MobileCLIP-S1": ("datacompdr", 72.6, 44.0, MOBILECLIP),
    "MobileCLIP-S2": ("datacompdr", 74.4, 45.4, MOBILECLIP),
    "MobileCLIP2-B": ("dfndr2b", 79.4, 49.9, MOBILECLIP),
    "ViT-B-32-SigLIP2-256": ("webli", 74.0, 47.2, SIGLIP2),
    "ViT-B-16-SigLIP2-256": ("webli", 79.1, 53.2, SIGLIP2),
    "PE-Core-S-16-384": ("meta", 72.7, 42.6, PE_CORE),
    "PE-Core-T-16-384": ("meta", 62.1, 33.0, PE_CORE),
}


def _best_seconds(run, runs: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process) of ``runs`` calls after a warm-up call. On a shared
    machine the CPU time (with passive OpenMP waiting, as in production) moves less than the wall time."""
    run()  # warm-up: the first call of a path pays for its kernels' set-up
    wall = cpu = float("inf")
    for _ in range(runs):
        began, began_cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - began), min(cpu, time.process_time() - began_cpu)
    return wall, cpu


def measure_model(name: str, batch: int, runs: int) -> dict:
    """In this process: one model's paths, text tower and peak memory."""
    importlib.import_module("encoders.encoder")  # first: it sets OpenMP's passive waiting, as every command runs
    import open_clip
    import torch
    from index_bench import export_onnx, stand_in_tokenizer

    from encoders import ModelSpec, inference, load_encoder

    scratch = Path(tempfile.mkdtemp(prefix="model-bench-"))
    stand_in_tokenizer(name, scratch)
    torch.manual_seed(0)
    encoder = load_encoder(ModelSpec(name, "none"), device="cpu")
    model = encoder.model.requires_grad_(False)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
    probes = inference.probe_batch(tuple(size), batch)
    reference, trials, cpu_ms = None, [], {}
    paths = inference.candidates(visual)
    if not inference.native_bf16():
        paths.append(inference.InferencePath(bf16=True))
    for path in paths:
        tower = path.tower(visual)
        vectors = inference.embed(tower, path, probes)
        reference = vectors if reference is None else reference
        seconds, cpu = _best_seconds(partial(inference.embed, tower, path, probes), runs)
        cpu_ms[path.name] = 1000 * cpu / batch
        trials.append(inference.Trial(path.name, batch / seconds, inference.agreement(reference, vectors),
                                      cpu_ms[path.name]))
        del tower
    onnx, onnx_refused = export_onnx(encoder, scratch)
    if onnx is not None:
        pixels = probes.numpy()
        seconds, cpu = _best_seconds(partial(onnx.encode_images, pixels), runs)
        cpu_ms[inference.ONNX] = 1000 * cpu / batch
        agrees = inference.agreement(reference, onnx.encode_images(pixels))
        trials.append(inference.Trial(inference.ONNX, batch / seconds, agrees, cpu_ms[inference.ONNX]))
    shutil.rmtree(scratch, ignore_errors=True)
    offered = {p.name for p in inference.candidates(visual)} | {inference.ONNX}  # what this CPU would choose among
    chosen = inference.choose([t for t in trials if t.path in offered], onnx=onnx is not None)
    config = open_clip.get_model_config(name)["text_cfg"]
    tokens = torch.randint(1, config.get("vocab_size", 49408) - 1, (1, config.get("context_length", 77)))
    with torch.inference_mode():
        text_ms = 1000 * _best_seconds(partial(model.encode_text, tokens), max(runs, 5))[0]
    eager = trials[0].images_per_second
    return {"model": name, "image_size": list(size), "chosen": chosen,
            "chosen_images_per_second": next(t.images_per_second for t in trials if t.path == chosen),
            "eager_images_per_second": eager, "text_ms": text_ms, "chosen_cpu_ms_per_image": cpu_ms[chosen],
            "eager_cpu_ms_per_image": cpu_ms[inference.EAGER], "onnx_refused": onnx_refused,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "paths": {t.path: {"images_per_second": round(t.images_per_second, 2),
                               "cpu_ms_per_image": round(cpu_ms[t.path], 1),
                               "min_cosine": round(t.agreement.min_cosine, 6), "same_top10": t.agreement.same_top_k}
                      for t in trials}}


def _machine() -> dict:
    from encoders.machine import NATIVE_BF16_FLAGS, cpu_flags, cpu_model

    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "native_bf16": sorted(flags & set(NATIVE_BF16_FLAGS)) or "none",
            "amx": sorted(f for f in flags if f.startswith("amx")) or "none"}


def _row(result: dict, load: tuple[float, float]) -> str:
    tag, imagenet, coco, _ = PUBLISHED.get(result["model"], (None, None, None, None))
    chosen, eager = result["chosen_images_per_second"], result["eager_images_per_second"]
    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return (f"| {result['model']} ({tag}) | {result['image_size'][0]} | {eager:.1f} | {result['chosen']} | "
            f"{chosen:.1f} | {chosen / eager:.2f}x | {result['eager_cpu_ms_per_image']:.0f} | "
            f"{result['chosen_cpu_ms_per_image']:.0f} | {result['text_ms']:.0f} | {result['peak_rss_mb']:.0f} | "
            f"{figure(imagenet)} | {figure(coco)} | {load[0]:.1f}/{load[1]:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(PUBLISHED))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "model")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_model(args.one, args.batch, args.runs)))
        return
    machine = _machine()
    print(json.dumps(machine))
    results = []
    print("| model (weights) | px | fp32-eager img/s | chosen path | img/s | speed-up | CPU ms/img eager | "
          "CPU ms/img chosen | text ms/query | peak MB | ImageNet % | COCO t→i R@1 % | load before/after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        before = os.getloadavg()[0]
        done = subprocess.run([sys.executable, __file__, "--one", name, "--batch", str(args.batch),
                               "--runs", str(args.runs)], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'} |")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["load"] = [before, os.getloadavg()[0]]
        results.append(result)
        print(_row(result, tuple(result["load"])), flush=True)
    for result in results:
        print(result["model"], json.dumps(result["paths"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps({"machine": machine, "batch": args.batch, "runs": args.runs,
                                                       "published": PUBLISHED, "results": results}, indent=1))


if __name__ == "__main__":
    main()
