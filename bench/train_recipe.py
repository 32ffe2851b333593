"""The recipe defaults, chosen from measured held-out runs: one training run per configuration, results in a table.

    python bench/train_recipe.py                                 # the built-in one-knob-at-a-time grid
    python bench/train_recipe.py --config "lr3e-3=--lr 3e-3 --warmup 0.05" --config "base="
    python bench/train_recipe.py --jobs 2                        # two runs at a time, one thread each

Every run trains ``clipsearch-tiny`` from scratch on emoji-google with a held-out slice of it (``--val-fraction``,
the same pictures for every run: the split follows the seed) as the **tuning set**, then ``search eval`` measures
the exported model on emoji-twitter (the same concepts by another artist), the **final held-out set**. Both report
text→image R@10 (per unique caption) and zero-shot accuracy over the ``category`` column. Choose on the tuning set;
emoji-twitter's figures are there to confirm the choice, not to make it.

Each run's row (configuration → metrics) is appended to ``<out>/results.jsonl``; the table printed at the end
covers every row there, so runs of several invocations stay side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
GRID = {  # one knob at a time around the trainer's defaults (the flags are `search train` options)
    "defaults": "",
    "lr 5e-4": "--lr 5e-4",
    "lr 2e-3": "--lr 2e-3",
    "lr 4e-3": "--lr 4e-3",
    "warmup 0.03": "--warmup 0.03",
    "warmup 0.2": "--warmup 0.2",
    "wd 0.02": "--wd 0.02",
    "wd 0.3": "--wd 0.3",
    "no random crop": "--crop-scale 1",
    "crop 0.9-1": "--crop-scale 0.9",
    "no label smoothing": "--label-smoothing 0",
    "temperature 0.03": "--init-temperature 0.03",
    "temperature 0.2": "--init-temperature 0.2",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "emoji-google" / "captions.csv")
    p.add_argument("--eval-data", type=Path, default=SHARED / "emoji-twitter" / "captions.csv")
    p.add_argument("--label-column", default="category")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", action="append", default=[], metavar="NAME=FLAGS",
                   help="a configuration to run (repeatable); default: the built-in grid")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each then gets cores // jobs threads)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "recipe")
    return p.parse_args(argv)


def configs(args) -> dict[str, str]:
    if not args.config:
        return dict(GRID)
    return dict(c.split("=", 1) if "=" in c else (c, "") for c in args.config)


def env(threads: int) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [e.get("PYTHONPATH")])])
    return e


def run_one(args, name: str, flags: str, threads: int) -> dict:
    folder = args.out / "runs" / name.replace(" ", "_").replace("/", "_")
    if folder.exists():
        shutil.rmtree(folder)
    train = [sys.executable, "-m", "train", "--data", str(args.data), "--model", "clipsearch-tiny",
             "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
             "--val-fraction", str(args.val_fraction), "--label-column", args.label_column,
             "--output", str(folder), "--no-progress", *shlex.split(flags)]
    start = time.perf_counter()
    done = subprocess.run(train, capture_output=True, text=True, cwd=REPO, env=env(threads))
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"config": name, "flags": flags, "error": done.stderr.strip().splitlines()[-1:]}
    summary = json.loads((folder / "summary.json").read_text())
    tuning = summary["validation"]
    evaluate = [sys.executable, "-m", "train", "eval", "--checkpoint", str(folder / "model"),
                "--data", str(args.eval_data), "--label-column", args.label_column, "--json"]
    held = json.loads(subprocess.run(evaluate, capture_output=True, text=True, cwd=REPO, env=env(threads),
                                     check=True).stdout.strip().splitlines()[-1])
    shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # ~100 MB a run; the exported model stays
    return {"config": name, "flags": flags, "epochs": args.epochs, "seconds": round(seconds, 1),
            "load_after": round(os.getloadavg()[0], 2), "threads": threads,
            "tuning_t2i_r1": tuning["text_to_image"]["recall@1"],
            "tuning_t2i_r10": tuning["text_to_image"]["recall@10"],
            "tuning_zero_shot": tuning["zero_shot"]["top1"],
            "heldout_t2i_r10": held["text_to_image"]["recall@10"],
            "heldout_t2i_r10_per_caption": held["text_to_image_per_caption"]["recall@10"],
            "heldout_zero_shot": held["zero_shot"]["top1"]}


def table(rows: list[dict]) -> str:
    lines = ["| config | flags | tuning t→i R@1 | tuning t→i R@10 | tuning zero-shot | emoji-twitter t→i R@10 | "
             "emoji-twitter zero-shot | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | `{r['flags']}` | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['config']} | `{r['flags']}` | {r['tuning_t2i_r1']:.4f} | {r['tuning_t2i_r10']:.4f} | "
                     f"{r['tuning_zero_shot']:.4f} | "
                     f"{r['heldout_t2i_r10']:.4f} | {r['heldout_zero_shot']:.4f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    print(f"1-min load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {args.jobs} job(s) "
          f"of {threads} thread(s)", flush=True)

    def work(item):
        row = run_one(args, *item, threads)
        with open(results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(work, configs(args).items()))
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
