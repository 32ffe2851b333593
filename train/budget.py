"""``--time-budget SECONDS``: the best model a wall-clock budget allows, exported in time.

A cosine schedule only ends well when it ends where it was planned to. So the first steps are
timed (the median of a few, after two that pay for the loader's start), then the schedule is fixed once:
as many steps as fit in what is left, after the time the run will also spend validating at
each epoch end (measured on a slice of the validation set), writing checkpoints and exporting
(estimated from the bytes to write). While it trains, a guard stops early should the steps
get slower (a busy machine), so the export still lands within the budget.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace

UNTIMED_STEPS = 2  # the first steps pay for the loader's start and the kernels' first runs
MEASURED_STEPS = 5  # then the median of this many steps is the step time
WRITE_BYTES_PER_S = 100e6  # a conservative disk, fsync included
FINISH_SECONDS = 3.0  # summary, curves, closing the logs
SAFETY = 0.03  # of the budget, for what no estimate sees


@dataclass
class Costs:
    """Seconds of each kind of work, measured or estimated."""

    step: float = 0.0
    validation: float = 0.0
    checkpoint: float = 0.0
    export: float = 0.0


@dataclass
class TimeBudget:
    seconds: float
    started: float  # time.monotonic() when the command started
    costs: Costs = field(default_factory=Costs)
    planned_steps: int | None = None
    stopped_early: bool = False
    exported_after: float | None = None  # seconds from the start to the exported model
    marks: deque = field(default_factory=lambda: deque(maxlen=UNTIMED_STEPS + MEASURED_STEPS))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def recent_step_seconds(self) -> float:
        """The median duration of the last steps (validations and checkpoints between them do not count)."""
        times = list(self.marks)[-(MEASURED_STEPS + 1):]
        return statistics.median(b - a for a, b in zip(times, times[1:], strict=False)) if len(times) > 1 else 0.0

    def step_done(self) -> bool:
        """Called after each step; True once, when the step time is first known."""
        self.marks.append(time.monotonic())
        if self.costs.step or len(self.marks) < UNTIMED_STEPS + MEASURED_STEPS:
            return False
        self.costs.step = self.recent_step_seconds()
        return True

    def available(self) -> float:
        return self.seconds * (1 - SAFETY) - FINISH_SECONDS - self.elapsed()

    def plan(self, done: int, steps_per_epoch: int, cap: int | None, save_every: int, validates: bool) -> int:
        """The most steps that fit (at least ``done``; at most ``cap``): a bisection, as the cost only grows."""
        low = done
        high = done + int(max(0.0, self.available()) / max(self.costs.step, 1e-9)) + 1
        if cap is not None:
            high = min(high, cap)
        while low < high:
            mid = (low + high + 1) // 2
            if cost(self.costs, done, mid, steps_per_epoch, save_every, validates) <= self.available():
                low = mid
            else:
                high = mid - 1
        self.planned_steps = low
        return low

    def must_stop(self, done: int, steps_per_epoch: int, save_every: int, validates: bool) -> bool:
        """Would one more step, at the pace of the last ones (and what comes with it), leave too little time?"""
        if not self.costs.step:
            return False
        costs = replace(self.costs, step=max(self.costs.step, self.recent_step_seconds()))
        late = cost(costs, done, done + 1, steps_per_epoch, save_every, validates) > self.available()
        self.stopped_early = self.stopped_early or late
        return late

    def report(self) -> dict:
        return {"seconds": self.seconds, "planned_steps": self.planned_steps, "stopped_early": self.stopped_early,
                **{f"{k}_seconds": round(v, 4) for k, v in asdict(self.costs).items()},
                "exported_after_seconds": round(self.exported_after or 0.0, 2),
                "finished_after_seconds": round(self.elapsed(), 2)}


def cost(costs: Costs, done: int, total: int, steps_per_epoch: int, save_every: int, validates: bool) -> float:
    """Seconds from now to an exported model, training from step ``done`` to ``total``."""
    epoch_ends = total // steps_per_epoch - done // steps_per_epoch
    saves = (total // save_every - done // save_every) if save_every else 0
    validations = (epoch_ends + (total % steps_per_epoch != 0)) if validates else 0
    return ((total - done) * costs.step + validations * costs.validation
            + (epoch_ends + saves) * costs.checkpoint + costs.export)


def write_seconds(n_bytes: int) -> float:
    return n_bytes / WRITE_BYTES_PER_S
