"""torchrun DDP: gloo on CPU, NCCL on GPU; a single process needs nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import TrainConfigError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


# How long a process waits for the others at a collective. Rank 0 validates and writes checkpoints
# while the others wait at a barrier: the default (10-30 min by backend) would end a large run there.
DEFAULT_TIMEOUT_MINUTES = 120.0


def init_distributed(timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> Dist:
    """Join the process group torchrun set up (env://), or describe the single process."""
    cuda = torch.cuda.is_available()
    if not launched_by_torchrun():
        return Dist(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_minutes))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def barrier(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.barrier()


def broadcast_object(d: Dist, value):
    """Rank 0's value on every rank (e.g. the checkpoint path to resume from)."""
    if not d.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_on_main(d: Dist, work, share: bool = True):
    """``work()`` on rank 0 alone. Its result (when ``share``) reaches every rank, and so does a
    ``TrainConfigError`` it raises: every rank stops with it instead of waiting for rank 0 until the timeout."""
    result, error = None, None
    if d.is_main:
        try:
            result = work()
        except TrainConfigError as e:
            error = str(e)
    error = broadcast_object(d, error)
    if error is not None:
        raise TrainConfigError(error)
    return broadcast_object(d, result) if share else result


def all_gather_object(d: Dist, value) -> list:
    """Every rank's value, in rank order, on every rank (e.g. each rank's random state for a checkpoint)."""
    if not d.enabled:
        return [value]
    out = [None] * d.world_size
    dist.all_gather_object(out, value)
    return out


def any_rank(d: Dist, flag: bool) -> bool:
    """True on every rank when it is true on one (e.g. a rank's clock says the time budget is spent)."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_mean(d: Dist, value: float) -> float:
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world_size).item()


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
