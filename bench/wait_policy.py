"""A training step with torch's OpenMP threads spinning (their default) against waiting passively (the indexer's).

    python bench/wait_policy.py                  # clipsearch-tiny, batch 128, 2 threads, 4 rounds
    python bench/wait_policy.py --rounds 6 --steps 20

libgomp reads OMP_WAIT_POLICY once, when torch loads it, so each side is a fresh process: the trainer's own
step (``train.step``: both towers, the loss, backward, clipping and AdamW) on fixed random pictures and
captions, the two sides taking turns round by round so a change in the machine's load hits both alike.
Spinning only costs where something else wants the cores, so run it idle and busy; the load is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_summary  # noqa: E402

SIDES = {"spinning (OpenMP default)": "ACTIVE", "passive (the indexer's)": "PASSIVE"}


def one_side(steps: int, batch: int, threads: int) -> dict:
    """In the child process: ms of wall and CPU per step after three untimed steps."""
    import time

    import open_clip
    import torch

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny)
    from train.model import TrainingTowers
    from train.optim import make_optimizer
    from train.step import accumulate_gradients, optimizer_step

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = open_clip.create_model("clipsearch-tiny")
    towers, optimizer, loss = TrainingTowers(model), make_optimizer(model, 1e-3, 0.1), open_clip.ClipLoss()
    images, texts = torch.randn(batch, 3, 64, 64), torch.randint(1, 49_000, (batch, 12))

    def step():
        accumulate_gradients(towers, loss, [(images, texts)])
        optimizer_step(model, optimizer, None, 1.0)

    for _ in range(3):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return {"wall_ms": (time.perf_counter() - wall) / steps * 1e3, "cpu_ms": (time.process_time() - cpu) / steps * 1e3}


def measure(policy: str, args) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--threads", str(args.threads)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_side(args.steps, args.batch_size, args.threads)))
        return
    print(cpu_summary())
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side, policy in SIDES.items():
            runs[side].append(measure(policy, args))
    print(f"clipsearch-tiny, batch {args.batch_size}, {args.threads} threads, {args.rounds} rounds × {args.steps} "
          f"steps; 1-min load average now {os.getloadavg()[0]:.2f}")
    medians = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_ms", "cpu_ms")}
               for side, rs in runs.items()}
    for side, m in medians.items():
        print(f"{side:<28} wall {m['wall_ms']:8.1f} ms/step   CPU {m['cpu_ms']:8.1f} ms/step")
    spin, ours = medians.values()
    print(f"spinning / passive: wall {spin['wall_ms'] / ours['wall_ms']:.2f}×, "
          f"CPU {spin['cpu_ms'] / ours['cpu_ms']:.2f}×")


if __name__ == "__main__":
    main()
