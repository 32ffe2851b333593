"""Our trainer against open_clip's own trainer: same data, model, batch, epochs and seed, in one run.

    python bench/train_bench.py                       # 8 epochs, batch 128, then ours again in their time
    python bench/train_bench.py --quick               # 1 epoch smoke run
    python bench/train_bench.py --precision fp32      # fp32 on both sides (default: ours takes its own choice)
    python bench/train_bench.py --precision bf16      # bf16 autocast on both sides

Both trainers train ``clipsearch-tiny`` on emoji-google (``--data``), one after the other (never at
the same time: they would share the CPU cores), each in its own process, for the same epochs. Then ours
trains once more with ``--time-budget`` set to open_clip_train's whole-process wall time (equal wall-clock;
``--no-equal-time`` skips it). Every model is evaluated on emoji-twitter (``--eval-data``) by the SAME
code, ``search eval --json --label-column category`` (recall and zero-shot category accuracy), and
recall is cross-checked with a small independent implementation in this file.

Throughput is measured the same way for both: the per-step times each trainer records (open_clip_train:
``Train Epoch ... Batch (t) ... samples/s`` log lines at every step; ours: ``metrics.jsonl``), leaving out
the first step of every epoch (data-loader workers starting), i.e. steady-state samples/s = samples of
the counted steps / their summed wall time (data wait included). The end-to-end figure (samples trained
/ whole process wall time, startup and saving included) is printed too.

The output ends with a table and one JSON line (also written to ``<out>/result.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_summary  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "emoji-google" / "captions.csv"
DEFAULT_EVAL = SHARED / "emoji-twitter" / "captions.csv"
MODEL = "clipsearch-tiny"
# Imports `encoders.loader` first: it registers clipsearch-tiny with open_clip.add_model_config.
OPENCLIP_LAUNCHER = ("import sys, encoders.loader; from open_clip_train.main import main; "
                     "sys.exit(main(sys.argv[1:]) or 0)")
SEARCH_LAUNCHER = "import sys; sys.argv[0] = 'search'; from search.cli import main; sys.exit(main())"
OPENCLIP_PRECISION = {"default": "fp32", "fp32": "fp32", "bf16": "amp_bf16"}
TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\] Data \(t\): ([\d.]+) "
                        r"Batch \(t\): ([\d.]+), ([\d.e+-]+)/s")
NOTE_ALPHA = ("open_clip_train's transforms convert RGBA with convert('RGB') (transparent pixels -> black) "
              "while ours composite onto white; the evaluation prepares pictures our way for both models, "
              "so the open_clip model is evaluated on a preparation it was not trained with")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="training CSV (filepath,caption)")
    p.add_argument("--eval-data", type=Path, default=DEFAULT_EVAL, help="held-out CSV for recall@k")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader workers for both trainers (default: ours chooses its own, 0 when the corpus "
                        "is decoded into memory; open_clip_train gets one per CPU core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=list(OPENCLIP_PRECISION), default="default",
                   help="default: each trainer's own (ours: measured per machine, train/fastpath.py; "
                        "open_clip_train: fp32); fp32 on both; or bf16 autocast on both (open_clip_train: amp_bf16)")
    p.add_argument("--openclip-warmup", type=float, default=0.1,
                   help="open_clip_train --warmup: a fraction (<1) of its total steps or a step count "
                        "(its default, 10000 steps, would never finish warming up on this corpus)")
    p.add_argument("--openclip-lr", type=float, default=None, help="open_clip_train --lr (default: its own, 5e-4)")
    p.add_argument("--only", choices=["ours", "openclip"], default=None, help="run one side only")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch")
    p.add_argument("--label-column", default="category", help="zero-shot accuracy over this column of --eval-data")
    p.add_argument("--no-equal-time", action="store_true",
                   help="skip the run of ours with --time-budget set to open_clip_train's wall time")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "train")
    p.add_argument("--no-reference-eval", action="store_true",
                   help="skip the cross-check with this file's own recall implementation")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs = 1
    args.data, args.eval_data, args.out = args.data.resolve(), args.eval_data.resolve(), args.out.resolve()
    return args


# ---------------------------------------------------------------------------------------------- helpers

def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run(cmd: list[str], log: Path, what: str) -> dict:
    """Run one command to completion with output to ``log``: its wall and CPU seconds (the process and the
    children it waited for, e.g. data-loader workers) and the machine's load; exits with the log's tail on failure.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    print(f"[{what}] {' '.join(cmd)}\n[{what}] output: {log}  (1-min load average before: {load_before:.2f} "
          f"on {os.cpu_count()} cores)", flush=True)
    if load_before > 0.5 * (os.cpu_count() or 1):
        print(f"[{what}] WARNING: the machine is busy: timings will be lower than on an idle machine", flush=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        sys.exit(f"[{what}] failed with exit code {rc} after {wall:.1f}s; last lines of {log}:\n{tail}")
    print(f"[{what}] done in {wall:.1f}s ({cpu:.1f} CPU s)", flush=True)
    return {"wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def read_rows(data: Path) -> list[dict]:
    with open(data, newline="") as f:
        return list(csv.DictReader(f))


def absolute_csv(data: Path, dest: Path) -> Path:
    """open_clip_train opens CSV paths as given (relative to its cwd): rewrite them absolute."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "caption"])
        for row in read_rows(data):
            writer.writerow([str((data.parent / row["filepath"]).resolve()), row["caption"]])
    return dest


def steady(steps: list[tuple[int, int, float | None]]) -> dict:
    """(epoch, samples, seconds or None) per step → steady-state samples/s, leaving out each epoch's first
    step (its time includes the data loader starting, or is unknown)."""
    seen, kept = set(), []
    for epoch, samples, seconds in steps:
        if epoch in seen and seconds is not None:
            kept.append((samples, seconds))
        seen.add(epoch)
    samples, seconds = sum(k[0] for k in kept), sum(k[1] for k in kept)
    return {"steps": len(steps), "steps_counted": len(kept), "samples_trained": sum(s[1] for s in steps),
            "steady_seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 1) if seconds else None}


# ---------------------------------------------------------------------------------------- open_clip_train

def openclip_steps(log: Path, batch_size: int) -> list[tuple[int, int, float]]:
    steps = []
    for line in log.read_text(errors="replace").splitlines():
        m = TRAIN_LINE.search(line)
        if m:
            per_s = float(m.group(7))
            steps.append((int(m.group(1)), batch_size, batch_size / per_s))
    return steps


def run_openclip(args, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)  # open_clip_train refuses to reuse an experiment name
    train_csv = absolute_csv(args.data, out / "train_abs.csv")
    n_rows = len(read_rows(args.data))
    steps_per_epoch = n_rows // args.batch_size  # its CSV loader drops the last partial batch
    warmup = (round(args.openclip_warmup * steps_per_epoch * args.epochs) if args.openclip_warmup < 1
              else int(args.openclip_warmup))
    cmd = [sys.executable, "-c", OPENCLIP_LAUNCHER,
           "--train-data", str(train_csv), "--dataset-type", "csv", "--csv-separator", ",",
           "--csv-img-key", "filepath", "--csv-caption-key", "caption",
           "--model", args.model, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--workers", str(openclip_workers(args)), "--seed", str(args.seed),
           "--precision", OPENCLIP_PRECISION[args.precision], "--device", "cpu",
           "--warmup", str(warmup), "--logs", str(out / "logs"), "--name", "run", "--report-to", "",
           "--save-frequency", str(args.epochs), "--zeroshot-frequency", "0", "--val-frequency", "0",
           "--log-every-n-steps", "1"]
    if args.openclip_lr is not None:
        cmd += ["--lr", str(args.openclip_lr)]
    proc = run(cmd, out / "stdout.log", "open_clip_train")
    result = {**steady(openclip_steps(out / "logs" / "run" / "out.log", args.batch_size)), **proc}
    ckpt = out / "logs" / "run" / "checkpoints" / f"epoch_{args.epochs}.pt"
    if not ckpt.is_file():
        sys.exit(f"[open_clip_train] no checkpoint at {ckpt}")
    model_dir = openclip_to_hub(ckpt, out / "model", args.model)
    result.update(model=str(model_dir), warmup_steps=warmup, precision=OPENCLIP_PRECISION[args.precision],
                  workers=openclip_workers(args), **per_second(result))
    return result


def openclip_workers(args) -> int:
    return args.workers if args.workers is not None else os.cpu_count() or 2


def openclip_to_hub(ckpt: Path, folder: Path, model_name: str) -> Path:
    """open_clip_train's epoch_N.pt (a dict with 'state_dict') → open_clip's hub folder format, the
    same format our trainer exports, so both models are loaded by the evaluation the same way."""
    code = f"""
import json, sys
from pathlib import Path
import encoders.loader, open_clip, safetensors.torch
ckpt, folder, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
model = open_clip.create_model(name, pretrained=str(ckpt), weights_only=True)  # strips 'module.', checks keys
folder.mkdir(parents=True, exist_ok=True)
safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
config = {{"model_cfg": open_clip.get_model_config(name),
          "preprocess_cfg": {{"mean": list(model.visual.image_mean), "std": list(model.visual.image_std)}},
          "clipsearch": {{"architecture": name, "source": "open_clip_train " + str(ckpt)}}}}
(folder / "{'open_clip_config.json'}").write_text(json.dumps(config, indent=2))
"""
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(folder), model_name], check=True, cwd=REPO,
                   env=_env())
    return folder


# ------------------------------------------------------------------------------------------- our trainer

def ours_steps(metrics: Path, batch_size: int) -> list[tuple[int, int, float | None]]:
    """Per-step (epoch, samples, seconds) from our trainer's metrics.jsonl: one row per optimizer step with
    ``train/loss`` and a wall-clock ``time`` (written right after the step's ``loss.item()``), so a step's time
    is the gap to the previous step of the same epoch; the first step of each epoch has none and is left out,
    as in open_clip_train's figure."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "train/loss" in r and "time" in r]
    steps, previous = [], {}
    for r in rows:
        epoch = int(r["epoch"])
        steps.append((epoch, batch_size, r["time"] - previous[epoch] if epoch in previous else None))
        previous[epoch] = r["time"]
    return steps


def run_ours(args, out: Path, time_budget: float | None = None) -> dict:
    """Ours for ``--epochs``, or (``time_budget``) for as many steps as that wall time allows, start to export."""
    if out.exists():
        shutil.rmtree(out)
    length = ["--time-budget", str(time_budget)] if time_budget else ["--epochs", str(args.epochs)]
    cmd = [sys.executable, "-m", "train", "--data", str(args.data), "--model", args.model, *length,
           "--batch-size", str(args.batch_size), "--output", str(out), "--seed", str(args.seed),
           "--no-progress", *([] if args.precision == "default" else ["--precision", args.precision])]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    proc = run(cmd, out.parent / f"{out.name}.log", out.name)
    metrics = out / "metrics.jsonl"
    result = steady(ours_steps(metrics, args.batch_size)) if metrics.is_file() else {}
    if not result.get("steps"):
        print(f"[ours] no per-step timings found in {metrics}: steady-state samples/s unavailable")
        result = {"samples_per_s": None, "samples_trained": None}
    result.update(proc)
    config = json.loads((out / "config.json").read_text())
    result.update(model=str(out / "model"), precision=config["step_path"] or config["precision"], workers=args.workers,
                  **per_second(result))
    return result


def per_second(result: dict) -> dict:
    """Whole-process figures: samples / wall second (startup and saving included) and / CPU second (less
    sensitive to other work on the machine)."""
    samples = result.get("samples_trained")
    return {"end_to_end_samples_per_s": round(samples / result["wall_seconds"], 1) if samples else None,
            "samples_per_cpu_s": round(samples / result["cpu_seconds"], 1) if samples and result["cpu_seconds"]
            else None}


# ------------------------------------------------------------------------------------------- evaluation

def search_eval(model_dir: Path, data: Path, log: Path, label_column: str) -> dict:
    cmd = [sys.executable, "-c", SEARCH_LAUNCHER, "eval", "--checkpoint", str(model_dir), "--data", str(data),
           "--label-column", label_column, "--json"]
    run(cmd, log, "search eval")
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    sys.exit(f"[search eval] no JSON line in {log}")


def reference_recall(model_dir: Path, data: Path, ks=(1, 5, 10)) -> dict:
    """Independent cross-check of ``search eval``: every image whose caption equals the query counts
    as a hit (text→image over the distinct captions; image→text over every image)."""
    import numpy as np
    import torch
    from PIL import Image

    import encoders

    enc = encoders.load_encoder(encoders.ModelSpec(model=MODEL, pretrained=None, checkpoint=str(model_dir)),
                                device="cpu")
    rows = read_rows(data)
    captions = [r["caption"] for r in rows]
    texts = sorted(set(captions))
    text_id = {t: i for i, t in enumerate(texts)}
    image_text = np.array([text_id[c] for c in captions])
    feats = []
    for start in range(0, len(rows), 256):
        batch = []
        for r in rows[start:start + 256]:
            with Image.open(data.parent / r["filepath"]) as im:
                batch.append(enc.image_tensor(im))
        feats.append(enc.encode_images(torch.stack(batch)))
    img = np.concatenate(feats)
    txt = enc.encode_texts(texts)
    kmax = max(ks)
    t2i_hits, i2t_hits = np.zeros(len(ks)), np.zeros(len(ks))
    for start in range(0, len(texts), 512):  # text→image
        sims = txt[start:start + 512] @ img.T
        top = np.argsort(-sims, axis=1)[:, :kmax]
        hit = image_text[top] == np.arange(start, start + len(sims))[:, None]
        t2i_hits += [hit[:, :k].any(1).sum() for k in ks]
    for start in range(0, len(img), 512):  # image→text
        sims = img[start:start + 512] @ txt.T
        top = np.argsort(-sims, axis=1)[:, :kmax]
        hit = top == image_text[start:start + len(sims), None]
        i2t_hits += [hit[:, :k].any(1).sum() for k in ks]
    return {"n_images": len(img), "n_captions": len(texts),
            "text_to_image": {f"recall@{k}": round(h / len(texts), 4) for k, h in zip(ks, t2i_hits, strict=True)},
            "image_to_text": {f"recall@{k}": round(h / len(img), 4) for k, h in zip(ks, i2t_hits, strict=True)}}


def evaluate(side: dict, args, out: Path, name: str) -> None:
    model_dir = Path(side["model"])
    try:
        side["eval"] = search_eval(model_dir, args.eval_data, out / f"eval_{name}.log", args.label_column)
    except SystemExit as e:
        print(f"[{name}] search eval unavailable or failed: {e}")
        side["eval"] = None
    if not args.no_reference_eval:
        side["eval_reference"] = reference_recall(model_dir, args.eval_data)


# --------------------------------------------------------------------------------------------- report

def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


TIMING_ROWS = (  # label, key, format, ratio shown
    ("steady samples/s", "samples_per_s", ".1f", True),
    ("training steps", "steps", "d", False),
    ("steady training seconds", "steady_seconds", ".1f", False),
    ("end-to-end samples/s", "end_to_end_samples_per_s", ".1f", True),
    ("samples per CPU second (whole process)", "samples_per_cpu_s", ".1f", True),
    ("process wall seconds", "wall_seconds", ".1f", False),
    ("1-min load average before / after", "load", "", False),
    ("samples trained", "samples_trained", "d", False),
    ("precision (ours: its CPU step path)", "precision", "", False),
)


def _recall10(side: dict) -> float | None:
    return ((side.get("eval") or {}).get("text_to_image") or {}).get("recall@10")


def _zero_shot(side: dict) -> float | None:
    return ((side.get("eval") or {}).get("zero_shot") or {}).get("top1")


def _ratio(a, b) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def print_side_by_side(args, ours: dict, oc: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"{'':44}{'ours':>12}{'open_clip_train':>18}{'ours/open_clip':>16}")

    def value(side: dict, key: str):
        if key == "load":
            return f"{side['load_before']:.1f}/{side['load_after']:.1f}" if side else None
        return side.get(key)

    for label, key, spec, show_ratio in TIMING_ROWS:
        a, b = value(ours, key), value(oc, key)
        r = f"{a / b:.2f}" if show_ratio and a and b else ""
        print(f"{label:44}{_fmt(a, spec):>12}{_fmt(b, spec):>18}{r:>16}")
    for source, name in (("eval", "search eval"), ("eval_reference", "bench cross-check")):
        if not (ours.get(source) or oc.get(source)):
            continue
        for direction, short in (("text_to_image", "text→image"), ("text_to_image_per_caption", "text→image/caption"),
                                 ("image_to_text", "image→text")):
            for k in (1, 5, 10):
                a = (ours.get(source) or {}).get(direction, {}).get(f"recall@{k}")
                b = (oc.get(source) or {}).get(direction, {}).get(f"recall@{k}")
                if a is None and b is None:
                    continue
                r = f"{a / b:.2f}" if a is not None and b else ""
                print(f"{f'{short} R@{k} ({name})':44}{_fmt(a, '.4f'):>12}{_fmt(b, '.4f'):>18}{r:>16}")
    a, b = _zero_shot(ours), _zero_shot(oc)
    r = f"{a / b:.2f}" if a is not None and b else ""
    print(f"{f'zero-shot top1 ({args.label_column})':44}{_fmt(a, '.4f'):>12}{_fmt(b, '.4f'):>18}{r:>16}")


def targets(results: dict) -> dict:
    """The issue's targets: at equal epochs speed ≥ 2.5×, R@10 ≥ 1.5×, zero-shot ≥ theirs; in their time R@10 ≥ 2×."""
    ours, oc, timed = results.get("ours") or {}, results.get("openclip") or {}, results.get("ours_equal_time") or {}
    figures = {
        "speed (steady samples/s), equal epochs": (_ratio(ours.get("samples_per_s"), oc.get("samples_per_s")), 2.5),
        "text→image R@10, equal epochs": (_ratio(_recall10(ours), _recall10(oc)), 1.5),
        "zero-shot top1, equal epochs": (_ratio(_zero_shot(ours), _zero_shot(oc)), 1.0),
        "text→image R@10, equal wall-clock": (_ratio(_recall10(timed), _recall10(oc)), 2.0),
    }
    return {name: {"ratio": ratio, "target": target, "met": ratio is not None and ratio >= target}
            for name, (ratio, target) in figures.items()}


def report(args, results: dict) -> dict:
    ours, oc, timed = results.get("ours") or {}, results.get("openclip") or {}, results.get("ours_equal_time")
    workers = "auto" if args.workers is None else args.workers
    print("\n" + "=" * 100)
    print(cpu_summary())
    print(f"train bench: {args.model} on {args.data}, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"seed {args.seed}, precision {args.precision}, workers {workers} (open_clip_train "
          f"{openclip_workers(args)}); evaluated on {args.eval_data}")
    print_side_by_side(args, ours, oc, f"equal epochs ({args.epochs})")
    if timed:
        print_side_by_side(args, timed, oc, f"equal wall-clock: ours with --time-budget {timed['time_budget']} s "
                                            f"(open_clip_train's process wall time), "
                                            f"{timed.get('samples_trained')} samples")
    print(f"note: {NOTE_ALPHA}")
    if oc:
        lr = "" if args.openclip_lr is None else f" but --lr {args.openclip_lr}"
        print(f"note: open_clip_train ran with --precision {oc['precision']}, --warmup {oc['warmup_steps']} steps, "
              f"its own lr/wd defaults{lr}; both trainers drop the last partial batch of each epoch")
    checks = targets(results)
    print("\ntargets (ours / open_clip_train):")
    for name, c in checks.items():
        print(f"  {name:44}{_fmt(c['ratio'], '.2f'):>8}  target ≥ {c['target']}: {'met' if c['met'] else 'NOT met'}")
    summary = {"bench": "train", "cpu": cpu_summary(), "model": args.model, "epochs": args.epochs,
               "batch_size": args.batch_size, "seed": args.seed, "precision": args.precision,
               "workers": args.workers, "openclip_workers": openclip_workers(args), "data": str(args.data),
               "eval_data": str(args.eval_data), "ours": results.get("ours"), "openclip": results.get("openclip"),
               "ours_equal_time": timed, "targets": checks,
               "samples_per_s_ratio": _ratio(ours.get("samples_per_s"), oc.get("samples_per_s"))}
    (args.out / "result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    if args.only in (None, "ours"):
        results["ours"] = run_ours(args, args.out / "ours")
    if args.only in (None, "openclip"):
        results["openclip"] = run_openclip(args, args.out / "openclip")
        if args.only is None and not args.no_equal_time:
            budget = results["openclip"]["wall_seconds"]
            results["ours_equal_time"] = run_ours(args, args.out / "ours_equal_time", time_budget=budget)
            results["ours_equal_time"]["time_budget"] = budget
    for name, side in results.items():
        evaluate(side, args, args.out, name)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
