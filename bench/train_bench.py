"""Our trainer against open_clip's own trainer: same data, model, batch, epochs and seed, in one run.

    python bench/train_bench.py                       # 5 epochs, batch 128, fp32 on both sides
    python bench/train_bench.py --quick               # 1 epoch smoke run
    python bench/train_bench.py --precision bf16      # bf16 autocast on both sides

Both trainers train ``clipsearch-tiny`` on emoji-google (``--data``), one after the other (never at
the same time: they would share the CPU cores), each in its own process. Then both checkpoints are
evaluated on emoji-twitter (``--eval-data``) by the SAME code, ``search eval --json`` (our evaluation),
and cross-checked with a small independent recall implementation in this file.

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
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "emoji-google" / "captions.csv"
DEFAULT_EVAL = SHARED / "emoji-twitter" / "captions.csv"
MODEL = "clipsearch-tiny"
# Imports `encoders` first: it registers clipsearch-tiny with open_clip.add_model_config.
OPENCLIP_LAUNCHER = ("import sys, encoders; from open_clip_train.main import main; "
                     "sys.exit(main(sys.argv[1:]) or 0)")
SEARCH_LAUNCHER = "import sys; sys.argv[0] = 'search'; from search.cli import main; sys.exit(main())"
OPENCLIP_PRECISION = {"fp32": "fp32", "bf16": "amp_bf16"}
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
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="data-loader workers, both trainers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 on both, or bf16 autocast on both (open_clip_train: amp_bf16)")
    p.add_argument("--openclip-warmup", type=float, default=0.1,
                   help="open_clip_train --warmup: a fraction (<1) of its total steps or a step count "
                        "(its default, 10000 steps, would never finish warming up on this corpus)")
    p.add_argument("--openclip-lr", type=float, default=None, help="open_clip_train --lr (default: its own, 5e-4)")
    p.add_argument("--only", choices=["ours", "openclip"], default=None, help="run one side only")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch")
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


def run(cmd: list[str], log: Path, what: str) -> float:
    """Run one command to completion with output to ``log``; its wall time, or exit with its log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{what}] {' '.join(cmd)}\n[{what}] output: {log}  (load average before: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=_env())
    wall = time.perf_counter() - start
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        sys.exit(f"[{what}] failed with exit code {rc} after {wall:.1f}s; last lines of {log}:\n{tail}")
    print(f"[{what}] done in {wall:.1f}s", flush=True)
    return wall


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


def steady(steps: list[tuple[int, int, float]]) -> dict:
    """(epoch, samples, seconds) per step → steady-state samples/s, leaving out each epoch's first step."""
    first_of_epoch = {}
    for i, (epoch, _, _) in enumerate(steps):
        first_of_epoch.setdefault(epoch, i)
    kept = [s for i, s in enumerate(steps) if i not in first_of_epoch.values()]
    if not kept:  # one step per epoch: nothing is steady, count everything
        kept = steps
    samples, seconds = sum(s[1] for s in kept), sum(s[2] for s in kept)
    return {"steps": len(steps), "steps_counted": len(kept), "samples_trained": sum(s[1] for s in steps),
            "train_seconds": round(sum(s[2] for s in steps), 2),
            "samples_per_s": round(samples / seconds, 1) if seconds else None}


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
           "--workers", str(args.workers), "--seed", str(args.seed),
           "--precision", OPENCLIP_PRECISION[args.precision], "--device", "cpu",
           "--warmup", str(warmup), "--logs", str(out / "logs"), "--name", "run", "--report-to", "",
           "--save-frequency", str(args.epochs), "--zeroshot-frequency", "0", "--val-frequency", "0",
           "--log-every-n-steps", "1"]
    if args.openclip_lr is not None:
        cmd += ["--lr", str(args.openclip_lr)]
    wall = run(cmd, out / "stdout.log", "open_clip_train")
    result = steady(openclip_steps(out / "logs" / "run" / "out.log", args.batch_size))
    ckpt = out / "logs" / "run" / "checkpoints" / f"epoch_{args.epochs}.pt"
    if not ckpt.is_file():
        sys.exit(f"[open_clip_train] no checkpoint at {ckpt}")
    model_dir = openclip_to_hub(ckpt, out / "model", args.model)
    result.update(wall_seconds=round(wall, 1), model=str(model_dir), warmup_steps=warmup,
                  precision=OPENCLIP_PRECISION[args.precision],
                  end_to_end_samples_per_s=round(result["samples_trained"] / wall, 1))
    return result


def openclip_to_hub(ckpt: Path, folder: Path, model_name: str) -> Path:
    """open_clip_train's epoch_N.pt (a dict with 'state_dict') → open_clip's hub folder format, the
    same format our trainer exports, so both models are loaded by the evaluation the same way."""
    code = f"""
import json, sys
from pathlib import Path
import encoders, open_clip, safetensors.torch
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

def ours_steps(metrics: Path, batch_size: int) -> list[tuple[int, int, float]]:
    """Per-step (epoch, samples, seconds) from our trainer's metrics.jsonl."""
    steps = []
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind", rec.get("type", "train")) not in ("train", "step"):
            continue
        seconds = next((rec[k] for k in ("step_time", "batch_time", "step_seconds", "seconds") if k in rec), None)
        per_s = next((rec[k] for k in ("samples_per_s", "samples_per_second", "samples_per_sec") if k in rec), None)
        samples = rec.get("batch_size", rec.get("samples", batch_size))
        if seconds is None and per_s:
            seconds = samples / per_s
        if seconds is None or "epoch" not in rec:
            continue
        steps.append((int(rec["epoch"]), int(samples), float(seconds)))
    return steps


def run_ours(args, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "train", "--data", str(args.data), "--model", args.model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--output", str(out),
           "--seed", str(args.seed), "--precision", args.precision, "--workers", str(args.workers)]
    wall = run(cmd, out.parent / "ours.log", "ours")
    metrics = out / "metrics.jsonl"
    result = steady(ours_steps(metrics, args.batch_size)) if metrics.is_file() else {}
    if not result.get("steps"):
        print(f"[ours] no per-step timings found in {metrics}: steady-state samples/s unavailable")
        result = {"samples_per_s": None, "samples_trained": None}
    samples = result.get("samples_trained")
    result.update(wall_seconds=round(wall, 1), model=str(out / "model"), precision=args.precision,
                  end_to_end_samples_per_s=round(samples / wall, 1) if samples else None)
    return result


# ------------------------------------------------------------------------------------------- evaluation

def search_eval(model_dir: Path, data: Path, log: Path) -> dict:
    cmd = [sys.executable, "-c", SEARCH_LAUNCHER, "eval", "--checkpoint", str(model_dir), "--data", str(data),
           "--json"]
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
        side["eval"] = search_eval(model_dir, args.eval_data, out / f"eval_{name}.log")
    except SystemExit as e:
        print(f"[{name}] search eval unavailable or failed: {e}")
        side["eval"] = None
    if not args.no_reference_eval:
        side["eval_reference"] = reference_recall(model_dir, args.eval_data)


# --------------------------------------------------------------------------------------------- report

def _fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(args, results: dict) -> dict:
    ours, oc = results.get("ours"), results.get("openclip")
    ratio = (round(ours["samples_per_s"] / oc["samples_per_s"], 2)
             if ours and oc and ours.get("samples_per_s") and oc.get("samples_per_s") else None)
    print("\n" + "=" * 100)
    print(f"train bench: {args.model}, data {args.data}, {args.epochs} epoch(s), batch {args.batch_size}, "
          f"workers {args.workers}, seed {args.seed}, precision {args.precision}; eval on {args.eval_data}")
    print(f"{'':28}{'ours':>14}{'open_clip_train':>18}{'ours/open_clip':>16}")
    rows = [("steady samples/s", "samples_per_s", ".1f"), ("end-to-end samples/s", "end_to_end_samples_per_s", ".1f"),
            ("process wall s", "wall_seconds", ".1f"), ("samples trained", "samples_trained", "d")]
    for label, key, spec in rows:
        a, b = (ours or {}).get(key), (oc or {}).get(key)
        r = f"{a / b:.2f}" if a and b and key != "samples_trained" and "wall" not in key else ""
        print(f"{label:36}{_fmt(a, spec):>14}{_fmt(b, spec):>18}{r:>16}")
    for source, title in (("eval", "search eval"), ("eval_reference", "bench reference recall")):
        if not any((s or {}).get(source) for s in (ours, oc)):
            continue
        for direction in ("text_to_image", "image_to_text"):
            for k in (1, 5, 10):
                a = ((ours or {}).get(source) or {}).get(direction, {}).get(f"recall@{k}")
                b = ((oc or {}).get(source) or {}).get(direction, {}).get(f"recall@{k}")
                r = f"{a / b:.2f}" if a is not None and b else ""
                label = f"{direction.replace('_to_', '→').replace('text', 't').replace('image', 'i')} R@{k}"
                print(f"{label + ' (' + title + ')':36}{_fmt(a, '.4f'):>14}{_fmt(b, '.4f'):>18}{r:>16}")
    print(f"note: {NOTE_ALPHA}")
    if oc:
        print(f"note: open_clip_train ran with --precision {oc['precision']}, --warmup {oc['warmup_steps']} steps, "
              f"its own lr/wd defaults{'' if args.openclip_lr is None else f' but --lr {args.openclip_lr}'}; "
              "its CSV loader drops the last partial batch of each epoch")
    summary = {"bench": "train", "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
               "workers": args.workers, "seed": args.seed, "precision": args.precision,
               "data": str(args.data), "eval_data": str(args.eval_data), "ours": ours, "openclip": oc,
               "samples_per_s_ratio": ratio}
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
    for name, side in results.items():
        evaluate(side, args, args.out, name)
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
