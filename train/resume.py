"""Resuming a run: find the checkpoint, refuse what would silently change the run, restore every rank.

A checkpoint holds, besides the weights, optimizer and schedule, the state of each rank (its
random generators, and for streamed shards what each loader slot delivered) and the number of
processes: the batch of a step and the position in the corpus depend on it, so a run is only
resumed with as many processes as wrote it.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import find_latest, load_checkpoint, rng_state, set_rng_state
from .config import TrainConfig
from .distributed import Dist, all_gather_object, broadcast_object
from .errors import TrainConfigError

RESUME_KEYS = ("batch_size", "accum_steps", "epochs", "seed", "loss", "model", "data")


def check_target(cfg: TrainConfig, output: Path) -> None:
    """Before anything is read or built: is there something to resume from?"""
    if cfg.resume == "latest" and find_latest(output) is None:
        raise TrainConfigError(f"--resume latest: no checkpoint found in {output / 'checkpoints'}")
    if cfg.resume and cfg.resume != "latest" and not Path(cfg.resume).is_file():
        raise TrainConfigError(f"--resume {cfg.resume}: no checkpoint found")


def load_resume(cfg: TrainConfig, output: Path, d: Dist) -> tuple[Path, dict]:
    """The checkpoint rank 0 chose (every rank reads the same file), checked against this run."""
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
    world = state.get("world_size")  # None: written before checkpoints recorded it
    if world is not None and world != d.world_size:
        raise TrainConfigError(f"--resume {path}: it was trained by {world} process(es) and this run has "
                               f"{d.world_size}; each step's batch and the position in the corpus depend on it: "
                               f"resume with {world} (torchrun --nproc-per-node) or start a new --output")
    return Path(path), state


def rank_state(state: dict, rank: int) -> dict:
    """This rank's part of a checkpoint (one written before ranks were recorded has rank 0's random state only)."""
    ranks = state.get("ranks")
    return ranks[rank] if ranks else {"rng": state["rng"], "data": {}}


def gather_rank_states(d: Dist, data) -> list[dict]:
    """Collective: every rank's random state and data position, for rank 0 to save."""
    return all_gather_object(d, {"rng": rng_state(), "data": data.state()})


def restore(state: dict, d: Dist, model, optimizer, scheduler, scaler, data) -> tuple[int, int, int]:
    """Load everything; returns (step, epoch to start in, step within it)."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    mine = rank_state(state, d.rank)
    data.load_state(mine.get("data", {}), state["epoch"])
    step, epoch, in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    if in_epoch >= data.steps_per_epoch:
        epoch, in_epoch = epoch + 1, 0
    set_rng_state(mine["rng"])
    return step, epoch, in_epoch
