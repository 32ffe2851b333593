"""Where one training step's time goes, and which CPU path is fastest, measured in one process run.

    python bench/train_step_profile.py                     # clipsearch-tiny, emoji-google, batch 128
    python bench/train_step_profile.py --steps 30 --variants fp32 bf16 bf16-math-attention compile

The trainer's own set-up builds everything (``train.loop.Run.setup``: the corpus decoded into memory,
the model, the optimizer, the loader); then each variant runs ``--warmup`` untimed steps and ``--steps``
timed ones, each phase timed apart: the next batch from the loader, the image tower, the text tower, the
loss, backward, and gradient clipping + the optimizer step. Variants (all on the same data and weights,
interleaved round by round so a change in the machine's load hits them alike):

- ``fp32``: what the trainer runs on a CPU without native bf16, or where bf16 measured no faster;
- ``bf16``: bf16 autocast (fast only where the CPU has AVX512-BF16 or AMX);
- ``bf16-math-attention``: bf16 autocast with PyTorch's plain attention instead of its fused CPU kernel
  (the trainer's CPU paths are these three, ``train/fastpath.py``);
- ``compile``: ``torch.compile`` of the training forward (its compile time printed apart).

``--crop-scale 1`` profiles the path without a random crop (pictures kept as the indexer prepares them).

Prints a table (milliseconds per step and phase, samples/s) with the machine's load and CPU flags.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_summary  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.distributed import Dist  # noqa: E402
from train.fastpath import PATHS  # noqa: E402
from train.loop import Run, mark_text_length_dynamic  # noqa: E402
from train.loss import contrastive_loss  # noqa: E402
from train.step import clamp_logit_scale  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "emoji-google" / "captions.csv"
PHASES = ("data", "image tower", "text tower", "loss", "backward", "clip + optimizer")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="clipsearch-tiny")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--crop-scale", type=float, default=None,
                   help="the trainer's --crop-scale (default: its own; 1 = no random crop, no per-picture work)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--rounds", type=int, default=2, help="the variants take turns this many times")
    p.add_argument("--variants", nargs="+", default=[*PATHS, "compile"], choices=[*PATHS, "compile"])
    return p.parse_args(argv)


def setup(args, out: Path) -> Run:
    knobs = {} if args.crop_scale is None else {"crop_scale": args.crop_scale}
    cfg = TrainConfig(data=[args.data], output=str(out), model=args.model, pretrained="none",
                      batch_size=args.batch_size, epochs=100, progress=False,
                      precision="fp32", **knobs)  # the variants bring their own; the run's needs no measuring
    cfg.validate()
    run = Run(cfg, Dist(), time.monotonic())
    run.setup()
    return run


class Variant:
    """One way of running the step on the shared model; ``forward`` returns the towers' outputs."""

    def __init__(self, name: str, run: Run):
        self.name, self.run = name, run
        self.autocast = PATHS[name].context if name in PATHS else contextlib.nullcontext
        self.towers = run.towers
        self.compile_seconds = None
        self.times = {phase: [] for phase in PHASES}
        if name == "compile":
            self.towers = torch.compile(run.towers)

    def step(self, batch_iter, timed: bool) -> None:
        run, marks = self.run, [time.perf_counter()]
        images, texts, _ = next(batch_iter)
        marks.append(time.perf_counter())
        with self.autocast():
            if self.name == "compile":  # one graph: the towers cannot be timed apart
                mark_text_length_dynamic(texts)
                out = self.towers(images, texts)
                image_f, text_f = out["image_features"], out["text_features"]
                marks.append(time.perf_counter())
            else:
                image_f = run.model.encode_image(images, normalize=True)
                marks.append(time.perf_counter())
                text_f = self.towers.encode_text(texts)
            marks.append(time.perf_counter())
        loss = contrastive_loss(run.loss_fn, image_f, text_f, run.model.logit_scale.exp())
        marks.append(time.perf_counter())
        loss.backward()
        marks.append(time.perf_counter())
        params = [p for p in run.model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, 1.0).item()
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(run.model)
        marks.append(time.perf_counter())
        if timed:
            for phase, a, b in zip(PHASES, marks[:-1], marks[1:], strict=True):
                self.times[phase].append(b - a)


def batches(run: Run):
    epoch = 0
    while True:
        yield from run.data.batches(epoch, 0)
        epoch += 1


def main(argv=None) -> int:
    args = parse_args(argv)
    import tempfile

    print(cpu_summary())
    with tempfile.TemporaryDirectory() as tmp:
        run = setup(args, Path(tmp))
        batch_iter = batches(run)
        variants = [Variant(name, run) for name in args.variants]
        for variant in variants:  # first steps: kernels' first runs, and torch.compile's compilation
            start = time.perf_counter()
            variant.step(batch_iter, timed=False)
            if variant.name == "compile":
                variant.compile_seconds = time.perf_counter() - start
            for _ in range(args.warmup - 1):
                variant.step(batch_iter, timed=False)
        for _ in range(args.rounds):
            for variant in variants:
                for _ in range(args.steps):
                    variant.step(batch_iter, timed=True)
    report(args, variants)
    return 0


def run_crop_scale(args) -> float:
    return TrainConfig.crop_scale if args.crop_scale is None else args.crop_scale


def report(args, variants) -> None:
    print(f"\n{args.model}, batch {args.batch_size}, crop scale {run_crop_scale(args)}, "
          f"{args.rounds} × {args.steps} timed steps per variant; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1-min load average now "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    header = f"{'median ms per step':24}" + "".join(f"{v.name:>20}" for v in variants)
    print(header)
    for phase in (*PHASES, "total"):
        cells = []
        for v in variants:
            if phase == "total":
                totals = [sum(step) for step in zip(*v.times.values(), strict=True)]
                cells.append(statistics.median(totals) * 1e3)
            else:
                cells.append(statistics.median(v.times[phase]) * 1e3)
        print(f"{phase:24}" + "".join(f"{c:20.1f}" for c in cells))
    rates = []
    for v in variants:
        totals = [sum(step) for step in zip(*v.times.values(), strict=True)]
        rates.append(args.batch_size / statistics.median(totals))
    print(f"{'samples/s (median step)':24}" + "".join(f"{r:20.1f}" for r in rates))
    base = rates[0]
    print(f"{'vs ' + variants[0].name:24}" + "".join(f"{r / base:20.2f}" for r in rates))
    for v in variants:
        if v.compile_seconds is not None:
            print(f"{v.name}: first step (compilation) {v.compile_seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
