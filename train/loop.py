"""The training run: set everything up (and check it) first, then a plain loop over epochs and steps."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from encoders.files import atomic_write

from .augment import BatchCrop
from .budget import TimeBudget, write_seconds
from .checkpoint import EXPORT_DIR, export_model, save_checkpoint
from .config import DEFAULT_EPOCHS, DEFAULT_LABEL_SMOOTHING, TrainConfig
from .corpus import Corpus, is_tar_pattern, read_corpus
from .data import RecordData, build_split, split_by_image
from .distributed import (
    Dist,
    all_reduce_mean,
    any_rank,
    barrier,
    init_distributed,
    run_on_main,
    shutdown,
)
from .errors import TrainConfigError
from .eval import evaluate, flatten
from .fastpath import PATHS, StepPath, cpu_path, to_channels_last, wants_channels_last
from .images import ModelPictures, TrainPictures
from .loss import make_loss
from .metrics import MetricsLog, plot_curves
from .model import TrainingTowers, apply_locks, build_model, check_model_name, default_model, model_loss
from .optim import WarmupCosine, make_optimizer, warmup_steps
from .resume import check_target, gather_rank_states, load_resume, restore
from .step import accumulate_gradients, optimizer_step, unwrap

LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-5
UNPLANNED = 10 ** 9  # the schedule's length until a time budget plans it


def resolve_precision(precision: str | None, device: torch.device) -> str | None:
    """The precision asked for, or a GPU's; None on a CPU left to choose (``fastpath.cpu_path`` measures)."""
    if precision:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainConfigError("--precision bf16: this GPU has no bfloat16; use fp16")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return None


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def enable_tf32(device: torch.device) -> None:
    """fp32 matrix products on TensorFloat-32 units (Ampere and later); as open_clip_train, CUDA only."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """Each rank's own seed for dropout and other in-model randomness (rank 0 keeps the run's seed)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def default_workers(in_memory: bool) -> int:
    cores = os.cpu_count() or 2
    if in_memory:
        # Pictures are decoded already: cropping them is light. With cores to spare one process crops
        # ahead; on 2 cores it would take a core from the model's threads (see BENCHMARKS.md, "Training").
        return 1 if cores > 2 else 0
    return max(1, min(8, cores - 1))


def mark_text_length_dynamic(texts: torch.Tensor) -> None:
    """Under ``--compile``, trimmed caption batches vary in length: one graph for every length, not one each."""
    torch._dynamo.mark_dynamic(texts, 1)


def describe_skipped(corpus: Corpus) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(corpus.skipped.items())) or "none"


def train(cfg: TrainConfig, started: float | None = None) -> dict:
    """Run training as configured; returns the summary also written to ``<output>/summary.json``.

    ``started``: the ``time.monotonic()`` a time budget counts from (default: now).
    """
    started = time.monotonic() if started is None else started
    cfg.validate()
    d = init_distributed(cfg.dist_timeout)
    try:
        return Run(cfg, d, started).run()
    finally:
        shutdown(d)


class Run:
    """One training run. ``setup`` checks and builds everything before the first step; ``loop`` trains."""

    def __init__(self, cfg: TrainConfig, d: Dist, started: float):
        self.cfg, self.d, self.started, self.output = cfg, d, started, Path(cfg.output)
        self.budget = TimeBudget(cfg.time_budget, started) if cfg.time_budget else None
        self.step = self.start_epoch = self.start_in_epoch = 0
        self.failed_total = self.trained_samples = 0
        self.last_val = None
        self.loss_value = float("nan")

    def say(self, message: str) -> None:
        if self.d.is_main:
            print(message, flush=True)

    def run(self) -> dict:
        self.setup()
        self.loop()
        return self.finish()

    # ---------------------------------------------------------------- set-up
    def setup(self) -> None:
        cfg, d = self.cfg, self.d
        cfg.model, cfg.pretrained = default_model(cfg.model, cfg.pretrained, cfg.checkpoint)
        if cfg.loss is None:
            cfg.loss = model_loss(cfg)
            cfg.validate()  # the checks that depend on the loss
        if cfg.lr is None:
            cfg.lr = LR_FINETUNE if cfg.from_weights else LR_SCRATCH
        if cfg.epochs is None and not cfg.time_budget:
            cfg.epochs = DEFAULT_EPOCHS
        if cfg.label_smoothing is None:
            cfg.label_smoothing = DEFAULT_LABEL_SMOOTHING if cfg.loss == "clip" else 0.0
        enable_tf32(d.device)
        seed_everything(cfg.seed)  # the same on every rank: a model from scratch starts the same everywhere
        check_model_name(cfg)
        check_target(cfg, self.output)
        self.resume_path, self.resume_state = load_resume(cfg, self.output, d) if cfg.resume else (None, None)
        self.templates = None
        if cfg.templates:
            from encoders import load_templates

            try:
                self.templates = load_templates(cfg.templates)
            except (OSError, ValueError) as e:  # a bad file: one line before any corpus is read, as in `search eval`
                raise TrainConfigError(f"--templates: {e}") from e

        t0 = time.time()
        records, val_records = self.read_corpora()
        built = self.built = build_model(cfg, d.device)
        self.model = built.model
        self.model.output_dict = True
        self.channels_last = wants_channels_last(self.model, d.device)
        if self.channels_last:
            to_channels_last(self.model)
        apply_locks(self.model, cfg)
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.towers = TrainingTowers(self.model)
        self.precision, self.step_path = self.choose_precision()
        self.data = self.make_data(records)
        self.val_split = self.make_val_split(val_records)
        self.validates = bool(val_records)
        self.say(f"corpus: {self.data.describe()}"
                 + (f", {len(self.val_split)} validation pictures" if self.val_split is not None else "")
                 + f"; skipped: {describe_skipped(self.corpus)}; ready in {time.time() - t0:.1f}s"
                 + (" (decoded into memory)" if self.data.in_memory else ""))
        seed_everything(rank_seed(cfg.seed, d.rank))  # dropout and the like differ between ranks
        self.make_optimizer()
        if self.resume_state is not None:
            self.step, self.start_epoch, self.start_in_epoch = restore(
                self.resume_state, d, self.model, self.optimizer, self.scheduler, self.scaler, self.data)
            self.say(f"resumed from {self.resume_path} at step {self.step} (epoch {self.start_epoch + 1}, "
                     f"step {self.start_in_epoch} of it)")
            if self.budget is not None and self.scheduler.total < UNPLANNED:
                self.budget.planned_steps = self.scheduler.total  # the schedule was fixed before: kept
            self.resume_state = None  # the weights are in the model now: free the copy
        self.ddp_model = self.wrap()
        self.write_config()
        self.log = MetricsLog(self.output, enabled=d.is_main)

    def choose_precision(self) -> tuple[str, StepPath | None]:
        """(precision, the CPU's step path): as asked for, or a GPU's default; on a CPU, as measured for this model
        here (a resumed run keeps the path it was trained with, to end as an uninterrupted one)."""
        cfg, d = self.cfg, self.d
        precision = resolve_precision(cfg.precision, d.device)
        if d.device.type != "cpu" or precision == "fp16":
            return precision, None
        recorded = self.resume_state.get("step_path") if self.resume_state is not None and not precision else None
        name = recorded or run_on_main(d, lambda: cpu_path(self.built, self.towers, cfg, precision).name)
        if precision is None:
            self.say(f"step path on this CPU: {name} ({'as the checkpoint was trained' if recorded else 'measured'}; "
                     "--precision to force one)")
        return PATHS[name].precision, PATHS[name]

    def read_corpora(self):
        """(training records, or None when tar shards stream; validation records)."""
        cfg = self.cfg
        tars = [is_tar_pattern(spec) and not Path(spec).is_dir() for spec in cfg.data]
        if any(tars):
            if not all(tars):
                raise TrainConfigError("tar shards are streamed: give them alone in --data (or list all the "
                                       "pictures in one CSV/JSONL)")
            if cfg.val_fraction:
                raise TrainConfigError("--val-fraction needs a listed corpus; with tar shards, hold some shards "
                                       "out and give them with --val-data")
            self.corpus = Corpus([])
            records = None
        else:
            self.corpus = read_corpus(cfg.data, cfg.image_column, cfg.caption_column, cfg.label_column)
            records = self.corpus.records
        if cfg.val_data:
            val_records = read_corpus(cfg.val_data, cfg.image_column, cfg.caption_column, cfg.label_column).records
        elif records is not None:
            records, val_records = split_by_image(records, cfg.val_fraction, cfg.seed)
        else:
            val_records = []
        if records is not None and not records:
            raise TrainConfigError("no training pictures left after holding out the validation split")
        global_batch = cfg.batch_size * cfg.accum_steps * self.d.world_size
        if records is not None and global_batch > len(records):
            raise TrainConfigError(f"the effective batch ({global_batch}) is larger than the training corpus "
                                   f"({len(records)} pictures); lower --batch-size")
        return records, val_records

    def make_data(self, records):
        cfg, d, built = self.cfg, self.d, self.built
        pictures = TrainPictures(built.image_size)
        trim = self.towers.trims_text
        pin = d.device.type == "cuda"
        if records is None:
            return self.make_stream(pictures, trim, pin)
        per_picture, batch_pixels, pictures = self.picture_path(pictures)
        split = build_split(records, built.tokenizer, pictures, self.corpus.skipped)
        global_batch = cfg.batch_size * cfg.accum_steps * d.world_size
        if len(split) < global_batch:
            raise TrainConfigError(f"only {len(split)} readable training pictures for an effective batch of "
                                   f"{global_batch} ({describe_skipped(self.corpus)}); lower --batch-size")
        workers = cfg.workers if cfg.workers is not None else default_workers(split.store.in_memory)
        return RecordData(split, per_picture, batch_pixels, cfg.batch_size, cfg.accum_steps, d.rank, d.world_size,
                          cfg.seed, workers, pin, trim)

    def picture_path(self, pictures: TrainPictures):
        """(work per picture in the loader, work per batch, what the store keeps): as little per picture as the
        transform allows (BENCHMARKS.md: 56 ms of a 375 ms step was per-picture work)."""
        built = self.built
        if built.train_transform is built.preprocess:
            prepared = ModelPictures(built.preprocess, built.model.visual.image_size)
            if prepared.split.fast:  # no random crop: kept as the indexer prepares them, normalised per batch
                return None, prepared.collate, prepared
        batch_crop = BatchCrop.of(built.train_transform)
        if batch_crop is not None:  # open_clip's random crop: boxes drawn per picture, pixels made per batch
            return batch_crop.draw, batch_crop.collate, pictures
        return built.train_transform, None, pictures

    def make_stream(self, pictures, trim: bool, pin: bool):
        from .corpus import expand_shards
        from .resume import rank_state
        from .stream import ShardStream, StreamData, count_samples

        cfg, d = self.cfg, self.d
        shards = expand_shards(cfg.data)
        n_samples = run_on_main(d, lambda: count_samples(shards))
        workers = cfg.workers
        if workers is None and self.resume_state is not None:  # a resumed stream needs its loader slots back
            workers = rank_state(self.resume_state, d.rank).get("data", {}).get("slots")
        workers = default_workers(False) if workers is None else workers
        stream = ShardStream(shards, pictures, self.built.train_transform, self.built.tokenizer, cfg.batch_size,
                             cfg.seed, d.rank, d.world_size, max(1, workers), cfg.resampled, cfg.caption_column,
                             trim)
        return StreamData(stream, n_samples, cfg.accum_steps, workers, pin)

    def make_val_split(self, val_records):
        """Rank 0 validates alone: only it decodes the validation pictures (at the model's input size)."""
        if not val_records:
            return None

        def decode():
            pictures = ModelPictures(self.built.preprocess, self.model.visual.image_size)
            split = build_split(val_records, self.built.tokenizer, pictures, self.corpus.skipped)
            if not len(split):
                raise TrainConfigError(f"none of the {len(val_records)} validation pictures could be read "
                                       f"({describe_skipped(self.corpus)})")
            return split

        return run_on_main(self.d, decode, share=False)

    def make_optimizer(self) -> None:
        cfg, d = self.cfg, self.d
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.wd)
        # With a time budget and no --epochs, the steps that measure the step time warm up towards
        # a schedule without end (a learning rate near zero); the real schedule then takes over.
        total = self.data.steps_per_epoch * cfg.epochs if cfg.epochs else UNPLANNED
        self.scheduler = WarmupCosine(self.optimizer, cfg.lr, warmup_steps(cfg.warmup, total), total)
        self.scaler = torch.amp.GradScaler(d.device.type) if self.precision == "fp16" else None
        self.autocast = self.step_path.context if self.step_path else autocast_for(self.precision, d.device)
        self.loss_fn = make_loss(cfg.loss, d.rank, d.world_size, cfg.label_smoothing)

    def wrap(self):
        cfg, d = self.cfg, self.d
        model = self.towers
        if d.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, forward_sync_buffers=False)
        if cfg.compile:
            if cfg.grad_checkpointing and d.enabled:
                # As open_clip_train: DDP's graph splitting in dynamo fails with checkpointed blocks.
                torch._dynamo.config.optimize_ddp = False
            model = torch.compile(model)
        self.no_sync = model.no_sync if d.enabled and hasattr(model, "no_sync") else None
        return model

    def write_config(self) -> None:
        if self.d.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            config = json.dumps({**asdict(self.cfg), "precision": self.precision,
                                 "step_path": self.step_path.name if self.step_path else None,
                                 "world_size": self.d.world_size}, indent=2)
            atomic_write(self.output / "config.json", lambda tmp: Path(tmp).write_text(config))

    # ---------------------------------------------------------------- the loop
    @property
    def total_steps(self) -> int:
        total = self.scheduler.total
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def loop(self) -> None:
        cfg = self.cfg
        spe = self.data.steps_per_epoch
        self.train_start = time.time()
        done = self.step >= self.total_steps
        for epoch in itertools.count(self.start_epoch):
            if done or (cfg.epochs is not None and epoch >= cfg.epochs):
                break
            first = self.start_in_epoch if epoch == self.start_epoch else 0
            progress = self.progress_bar(spe, first, epoch)
            in_epoch, done = self.run_epoch(epoch, first, progress)
            if progress is not None:
                progress.close()
            if in_epoch == spe:
                self.end_epoch(epoch, in_epoch)
            barrier(self.d)
        if self.budget is not None and self.step % spe:  # the budget ended mid-epoch: the model still gets its figures
            self.last_val = self.validate(self.step // spe) or self.last_val

    def run_epoch(self, epoch: int, first: int, progress) -> tuple[int, bool]:
        cfg, d = self.cfg, self.d
        micro, in_epoch = [], first
        self.window = (0, time.time())
        self.epoch_start = time.time()
        for images, texts, failed in self.data.batches(epoch, first):
            self.failed_total += int(failed.sum())
            texts = texts.to(d.device, non_blocking=True)
            if cfg.compile and self.towers.trims_text:
                mark_text_length_dynamic(texts)
            images = images.to(d.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            micro.append((images, texts))
            if len(micro) < cfg.accum_steps:
                continue
            self.train_step(micro, epoch, in_epoch + 1, progress)
            micro, in_epoch = [], in_epoch + 1
            if cfg.save_every and self.step % cfg.save_every == 0 and in_epoch < self.data.steps_per_epoch:
                self.save("step", epoch, in_epoch)
            if self.step >= self.total_steps or self.out_of_time():
                return in_epoch, True
        return in_epoch, False

    def train_step(self, micro: list, epoch: int, in_epoch: int, progress) -> None:
        cfg, d = self.cfg, self.d
        lr = self.scheduler.set(self.step)
        loss = accumulate_gradients(self.ddp_model, self.loss_fn, micro, self.autocast, self.scaler, self.no_sync)
        grad_norm = optimizer_step(self.ddp_model, self.optimizer, self.scaler, cfg.grad_clip)
        self.step += 1
        samples = cfg.batch_size * cfg.accum_steps * d.world_size
        self.trained_samples += samples
        self.loss_value = all_reduce_mean(d, loss.item())  # each rank holds the loss of its own rows
        if not math.isfinite(self.loss_value):
            raise TrainConfigError(f"the loss is {self.loss_value} at step {self.step}: lower --lr or use "
                                   "--precision fp32")
        window_samples, window_start = self.window
        window_samples += samples
        now = time.time()
        rate = window_samples / max(now - window_start, 1e-9)
        if progress is not None:
            progress.set_postfix(loss=f"{self.loss_value:.4f}", samples_s=f"{rate:.0f}", lr=f"{lr:.2e}")
            progress.update(1)
        if self.step % cfg.log_every == 0 or in_epoch == self.data.steps_per_epoch or self.step == self.total_steps:
            self.log.log(self.step, {"epoch": epoch + 1, "train/loss": self.loss_value, "train/lr": lr,
                                     "train/samples_per_s": rate,
                                     "train/logit_scale": unwrap(self.model).logit_scale.exp().item(),
                                     **({"train/grad_norm": grad_norm} if grad_norm is not None else {})})
            window_samples, window_start = 0, now
        else:
            self.log.log(self.step, {"epoch": epoch + 1, "train/loss": self.loss_value})
        self.window = (window_samples, window_start)

    def end_epoch(self, epoch: int, in_epoch: int) -> None:
        first = self.start_in_epoch if epoch == self.start_epoch else 0
        epoch_time = time.time() - self.epoch_start
        samples = self.cfg.batch_size * self.cfg.accum_steps * self.d.world_size
        self.say(f"epoch {epoch + 1}{'/' + str(self.cfg.epochs) if self.cfg.epochs else ''}: loss "
                 f"{self.loss_value:.4f}, {(in_epoch - first) * samples / max(epoch_time, 1e-9):.1f} samples/s")
        self.save("epoch", epoch, in_epoch)
        self.last_val = self.validate(epoch) or self.last_val

    def save(self, kind: str, epoch: int, in_epoch: int) -> None:
        """Collective (every rank's random state and data position are gathered); rank 0 writes."""
        ranks = gather_rank_states(self.d, self.data)
        if self.d.is_main:
            payload = {"state_dict": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                       "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                       "scheduler": self.scheduler.state_dict(), "step": self.step, "epoch": epoch,
                       "step_in_epoch": in_epoch, "ranks": ranks,
                       "step_path": self.step_path.name if self.step_path else None, "world_size": self.d.world_size,
                       "config": json.loads(json.dumps(asdict(self.cfg))), "architecture": self.built.architecture}
            save_checkpoint(self.output, kind, self.step, payload)

    def validate(self, epoch: int) -> dict | None:
        """Rank 0 evaluates while the others wait (the process-group timeout allows for it)."""
        if not self.validates:
            return None

        def evaluate_and_log() -> dict:
            result = evaluate(self.model, self.val_split, self.built.tokenizer, self.d.device, self.cfg.batch_size,
                              self.templates, self.autocast)
            self.log.log(self.step, {"epoch": epoch + 1, **flatten(result, "val/")})
            t2i, i2t = result["text_to_image"], result["image_to_text"]
            self.say(f"epoch {epoch + 1} validation: text→image (per unique caption) R@1/5/10 {t2i['recall@1']:.3f}/"
                     f"{t2i['recall@5']:.3f}/{t2i['recall@10']:.3f}, image→text R@1 {i2t['recall@1']:.3f}"
                     + (f", zero-shot top1 {result['zero_shot']['top1']:.3f}" if "zero_shot" in result else ""))
            return result

        return run_on_main(self.d, evaluate_and_log, share=False)

    # ---------------------------------------------------------------- the time budget
    def out_of_time(self) -> bool:
        """With ``--time-budget``: fix the schedule once the first steps are timed; stop when time runs out."""
        budget = self.budget
        if budget is None:
            return False
        spe, save_every = self.data.steps_per_epoch, self.cfg.save_every
        if budget.step_done():
            self.plan_schedule()
        late = self.d.is_main and budget.must_stop(self.step, spe, save_every, self.validates)
        return any_rank(self.d, late)

    def plan_schedule(self) -> None:
        """Rank 0 estimates what else the run will spend time on and sizes the schedule; every rank takes it.

        A resumed run keeps the schedule it was given; the estimates then only serve the guard.
        """
        budget, cfg, spe = self.budget, self.cfg, self.data.steps_per_epoch

        def estimate_and_plan():
            n_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
            budget.costs.export = write_seconds(n_bytes)
            budget.costs.checkpoint = write_seconds(3 * n_bytes)  # weights and the two Adam moments
            budget.costs.validation = self.validation_seconds()
            cap = spe * cfg.epochs if cfg.epochs else None
            total = budget.planned_steps or budget.plan(self.step, spe, cap, cfg.save_every, self.validates)
            return total, budget.costs

        total, budget.costs = run_on_main(self.d, estimate_and_plan)
        if total == budget.planned_steps and self.scheduler.total == total:
            return
        budget.planned_steps = total
        self.scheduler.warmup, self.scheduler.total = warmup_steps(cfg.warmup, total), max(total, 1)
        self.say(f"time budget: {budget.costs.step:.3f}s a step; the schedule is fixed at {total} steps "
                 f"({total / spe:.1f} epochs)")

    def validation_seconds(self) -> float:
        """One validation, timed on a slice of the validation set and scaled to all of it."""
        if self.val_split is None:
            return 0.0
        n = min(len(self.val_split), 2 * self.cfg.batch_size)
        start = time.monotonic()
        evaluate(self.model, self.val_split.subset(list(range(n))), self.built.tokenizer, self.d.device,
                 self.cfg.batch_size, self.templates, self.autocast)
        return (time.monotonic() - start) * len(self.val_split) / n

    # ---------------------------------------------------------------- the end
    def finish(self) -> dict:
        cfg, d = self.cfg, self.d
        elapsed = time.time() - self.train_start
        summary = {"steps": self.step, "epochs": cfg.epochs, "precision": self.precision, "world_size": d.world_size,
                   "samples_per_s": self.trained_samples / max(elapsed, 1e-9), "train_seconds": elapsed,
                   "train_pictures": self.data.n_samples,
                   "skipped": dict(self.corpus.skipped), "unreadable_during_training": self.failed_total,
                   "model": str(self.output / EXPORT_DIR), "validation": self.last_val}
        if d.is_main:
            export_model(self.model, self.built.model_cfg, self.built.architecture, self.output / EXPORT_DIR,
                         extra={"trained_steps": self.step, "loss": cfg.loss, "seed": cfg.seed},
                         tokenizer=self.built.tokenizer)
            if self.budget is not None:
                self.budget.exported_after = self.budget.elapsed()
            self.log.close()
            plot_curves(self.output / "metrics.jsonl", self.output / "curves.png")  # says why, should it fail
            if self.budget is not None:
                summary["time_budget"] = self.budget.report()
            atomic_write(self.output / "summary.json", lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2)))
            self.say(f"model written to {self.output / EXPORT_DIR} ({summary['samples_per_s']:.1f} samples/s)")
        barrier(d)
        return summary

    def progress_bar(self, total: int, initial: int, epoch: int):
        if not (self.d.is_main and self.cfg.progress):
            return None
        from tqdm.auto import tqdm

        label = f"epoch {epoch + 1}" + (f"/{self.cfg.epochs}" if self.cfg.epochs else "")
        return tqdm(total=total, initial=initial, desc=label, unit="step", dynamic_ncols=True, leave=False)
