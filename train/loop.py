"""The training run: set up, then a plain loop over epochs and steps (nanoGPT-style)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .checkpoint import (
    EXPORT_DIR,
    export_model,
    find_latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .corpus import Corpus, read_corpus
from .data import EpochBatches, build_split, split_by_image, train_loader
from .distributed import Dist, all_reduce_mean, barrier, broadcast_object, init_distributed, shutdown
from .errors import TrainConfigError
from .eval import evaluate, flatten
from .images import train_side
from .loss import make_loss
from .metrics import MetricsLog, plot_curves
from .model import TrainingTowers, apply_locks, build_model, check_model_name, default_model
from .optim import WarmupCosine, make_optimizer, warmup_steps
from .step import accumulate_gradients, optimizer_step, unwrap

LR_SCRATCH, LR_FINETUNE = 1e-3, 1e-5
RESUME_KEYS = ("batch_size", "accum_steps", "epochs", "seed", "loss", "model", "data")


def resolve_precision(precision: str | None, device: torch.device) -> str:
    if precision:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainConfigError("--precision bf16: this GPU has no bfloat16; use fp16")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # measured on 2-core AVX-512 CPUs: bf16 autocast is not faster for small models


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def default_workers(in_memory: bool) -> int:
    cores = os.cpu_count() or 2
    if in_memory:
        # Pictures are decoded already: cropping them is light. With cores to spare one process crops
        # ahead; on 2 cores it would take a core from the model's threads (measured at batch 32:
        # 213 samples/s with a worker, 382 without; equal at batch 128).
        return 1 if cores > 2 else 0
    return max(1, min(8, cores - 1))


def describe_skipped(corpus: Corpus) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(corpus.skipped.items())) or "none"


def _say(d: Dist, message: str) -> None:
    if d.is_main:
        print(message, flush=True)


def train(cfg: TrainConfig) -> dict:
    """Run training as configured; returns the summary also written to ``<output>/summary.json``."""
    cfg.validate()
    d = init_distributed()
    try:
        return _train(cfg, d)
    finally:
        shutdown(d)


def _train(cfg: TrainConfig, d: Dist) -> dict:
    output = Path(cfg.output)
    cfg.model, cfg.pretrained = default_model(cfg.model, cfg.pretrained, cfg.checkpoint)
    if cfg.lr is None:
        cfg.lr = LR_FINETUNE if cfg.from_weights else LR_SCRATCH
    precision = resolve_precision(cfg.precision, d.device)
    seed_everything(cfg.seed)
    check_model_name(cfg)
    if cfg.resume and cfg.resume != "latest" and not Path(cfg.resume).is_file():
        raise TrainConfigError(f"--resume {cfg.resume}: no checkpoint found")
    if cfg.resume == "latest" and find_latest(output) is None:
        raise TrainConfigError(f"--resume latest: no checkpoint found in {output / 'checkpoints'}")

    # Everything that can be wrong is checked here, before the first step.
    corpus = read_corpus(cfg.data, cfg.image_column, cfg.caption_column, cfg.label_column)
    if cfg.val_data:
        val_records = read_corpus(cfg.val_data, cfg.image_column, cfg.caption_column, cfg.label_column).records
        train_records = corpus.records
    else:
        train_records, val_records = split_by_image(corpus.records, cfg.val_fraction, cfg.seed)
    if not train_records:
        raise TrainConfigError("no training pictures left after holding out the validation split")
    global_batch = cfg.batch_size * cfg.accum_steps * d.world_size
    if global_batch > len(train_records):
        raise TrainConfigError(f"the effective batch ({global_batch}) is larger than the training corpus "
                               f"({len(train_records)} pictures); lower --batch-size")
    built = build_model(cfg, d.device)
    model = built.model
    model.output_dict = True
    apply_locks(model, cfg)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)

    t0 = time.time()
    train_split = build_split(train_records, built.tokenizer, train_side(built.image_size), corpus.skipped)
    val_split = build_split(val_records, built.tokenizer, None, corpus.skipped) if val_records else None
    if len(train_split) < global_batch:
        raise TrainConfigError(f"only {len(train_split)} readable training pictures for an effective batch of "
                               f"{global_batch} ({describe_skipped(corpus)}); lower --batch-size")
    workers = cfg.workers if cfg.workers is not None else default_workers(train_split.store.in_memory)
    _say(d, f"corpus: {len(train_split)} training pictures ({len(train_split.captions)} captions)"
            + (f", {len(val_split)} validation pictures" if val_split else "")
            + f"; skipped: {describe_skipped(corpus)}; decoded in {time.time() - t0:.1f}s"
            + (" into memory" if train_split.store.in_memory else ""))

    sampler = EpochBatches(len(train_split), cfg.batch_size, cfg.accum_steps, d.rank, d.world_size, cfg.seed)
    towers = TrainingTowers(model)
    loader = train_loader(train_split, built.train_transform, sampler, cfg.seed, workers,
                          pin_memory=d.device.type == "cuda", trim_text=towers.trims_text)
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = make_optimizer(model, cfg.lr, cfg.wd)
    scheduler = WarmupCosine(optimizer, cfg.lr, warmup_steps(cfg.warmup, steps_per_epoch * cfg.epochs),
                             steps_per_epoch * cfg.epochs)
    scaler = torch.amp.GradScaler(d.device.type) if precision == "fp16" else None
    autocast = autocast_for(precision, d.device)
    loss_fn = make_loss(cfg.loss, d.rank, d.world_size)

    step, start_epoch, start_in_epoch = 0, 0, 0
    if cfg.resume:
        path = find_latest(output) if cfg.resume == "latest" else Path(cfg.resume)
        path = broadcast_object(d, str(path) if path else None)
        if path is None or not Path(path).is_file():
            raise TrainConfigError(f"--resume {cfg.resume}: no checkpoint found"
                                   + (f" in {output / 'checkpoints'}" if cfg.resume == "latest" else ""))
        state = load_checkpoint(Path(path))
        saved = state.get("config", {})
        changed = [k for k in RESUME_KEYS if k in saved and saved[k] != getattr(cfg, k)]
        if changed:
            raise TrainConfigError(f"--resume {path}: it was trained with other "
                                   + ", ".join(f"--{k.replace('_', '-')} ({saved[k]} vs {getattr(cfg, k)})"
                                               for k in changed)
                                   + "; resume with the same settings or start a new --output")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, start_epoch, start_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        if start_in_epoch >= steps_per_epoch:
            start_epoch, start_in_epoch = start_epoch + 1, 0
        set_rng_state(state["rng"])
        _say(d, f"resumed from {path} at step {step} (epoch {start_epoch + 1}, step {start_in_epoch} of it)")

    ddp_model = towers
    if d.enabled:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            towers, device_ids=[d.local_rank] if d.device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        ddp_model = torch.compile(ddp_model)
    no_sync = ddp_model.no_sync if d.enabled and hasattr(ddp_model, "no_sync") else None

    if d.is_main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps({**asdict(cfg), "precision": precision,
                                                        "world_size": d.world_size}, indent=2))
    log = MetricsLog(output, enabled=d.is_main)
    templates = None
    if cfg.templates:
        from encoders import load_templates

        templates = load_templates(cfg.templates)

    def checkpoint_payload(epoch: int, in_epoch: int) -> dict:
        return {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch, "step_in_epoch": in_epoch,
                "rng": rng_state(), "config": json.loads(json.dumps(asdict(cfg))),
                "architecture": built.architecture}

    def validate(epoch: int) -> dict | None:
        if val_split is None:
            return None
        result = None
        if d.is_main:
            result = evaluate(model, val_split, built.preprocess, built.tokenizer, d.device, cfg.batch_size,
                              templates, autocast)
            log.log(step, {"epoch": epoch + 1, **flatten(result, "val/")})
            t2i, i2t = result["text_to_image"], result["image_to_text"]
            _say(d, f"epoch {epoch + 1} validation: text→image R@1/5/10 {t2i['recall@1']:.3f}/"
                    f"{t2i['recall@5']:.3f}/{t2i['recall@10']:.3f}, image→text R@1 {i2t['recall@1']:.3f}"
                    + (f", zero-shot top1 {result['zero_shot']['top1']:.3f}" if "zero_shot" in result else ""))
        barrier(d)
        return result

    # ---------------------------------------------------------------- the loop
    samples_per_step = global_batch
    last_val = None
    failed_total = 0
    start_time = time.time()
    trained_samples = 0
    done = step >= total_steps
    for epoch in range(start_epoch, cfg.epochs):
        if done:
            break
        first = start_in_epoch if epoch == start_epoch else 0
        sampler.set_epoch(epoch, first)
        progress = _progress(d, cfg, steps_per_epoch, first, epoch)
        micro, epoch_start, window_samples, window_start = [], time.time(), 0, time.time()
        in_epoch = first
        for images, texts, failed in loader:
            failed_total += int(failed.sum())
            micro.append((images.to(d.device, non_blocking=True), texts.to(d.device, non_blocking=True)))
            if len(micro) < cfg.accum_steps:
                continue
            lr = scheduler.set(step)
            loss = accumulate_gradients(ddp_model, loss_fn, micro, autocast, scaler, no_sync)
            grad_norm = optimizer_step(ddp_model, optimizer, scaler, cfg.grad_clip)
            micro = []
            step += 1
            in_epoch += 1
            trained_samples += samples_per_step
            window_samples += samples_per_step
            loss_value = all_reduce_mean(d, loss.item())  # each rank holds the loss of its own rows
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss is {loss_value} at step {step}: lower --lr or use --precision fp32")
            now = time.time()
            rate = window_samples / max(now - window_start, 1e-9)
            if progress is not None:
                progress.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{rate:.0f}", lr=f"{lr:.2e}")
                progress.update(1)
            if step % cfg.log_every == 0 or in_epoch == steps_per_epoch or step == total_steps:
                log.log(step, {"epoch": epoch + 1, "train/loss": loss_value, "train/lr": lr,
                               "train/samples_per_s": rate, "train/logit_scale": unwrap(model).logit_scale.exp().item(),
                               **({"train/grad_norm": grad_norm} if grad_norm is not None else {})})
                window_samples, window_start = 0, now
            else:
                log.log(step, {"epoch": epoch + 1, "train/loss": loss_value})
            if cfg.save_every and step % cfg.save_every == 0 and in_epoch < steps_per_epoch and d.is_main:
                save_checkpoint(output, "step", step, checkpoint_payload(epoch, in_epoch))
            if step >= total_steps:
                done = True
                break
        if progress is not None:
            progress.close()
        epoch_time = time.time() - epoch_start
        if in_epoch == steps_per_epoch:
            _say(d, f"epoch {epoch + 1}/{cfg.epochs}: loss {loss_value:.4f}, "
                    f"{(in_epoch - first) * samples_per_step / max(epoch_time, 1e-9):.1f} samples/s")
            if d.is_main:
                save_checkpoint(output, "epoch", step, checkpoint_payload(epoch, in_epoch))
            last_val = validate(epoch) or last_val
        barrier(d)

    elapsed = time.time() - start_time
    summary = {"steps": step, "epochs": cfg.epochs, "precision": precision, "world_size": d.world_size,
               "samples_per_s": trained_samples / max(elapsed, 1e-9), "train_seconds": elapsed,
               "train_pictures": len(train_split), "skipped": dict(corpus.skipped),
               "unreadable_during_training": failed_total, "model": str(output / EXPORT_DIR),
               "validation": last_val}
    if d.is_main:
        export_model(model, built.model_cfg, built.architecture, output / EXPORT_DIR,
                     extra={"trained_steps": step, "loss": cfg.loss, "seed": cfg.seed})
        log.close()
        plot_curves(output / "metrics.jsonl", output / "curves.png")
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        _say(d, f"model written to {output / EXPORT_DIR} ({summary['samples_per_s']:.1f} samples/s)")
    barrier(d)
    return summary


def _progress(d: Dist, cfg: TrainConfig, total: int, initial: int, epoch: int):
    if not (d.is_main and cfg.progress):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                dynamic_ncols=True, leave=False)
