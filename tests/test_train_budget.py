"""--time-budget: the schedule is sized from the measured step time, the run ends with its model exported
within the budget, and the cosine schedule ends where it was planned to."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shapes_corpus  # noqa: E402


@pytest.fixture()
def clock(monkeypatch):
    """The budget's clock, moved by hand."""
    from train import budget

    now = [1000.0]
    monkeypatch.setattr(budget.time, "monotonic", lambda: now[0])
    return now


def test_plan_fits_steps_validations_checkpoints_and_export(clock):
    from train.budget import FINISH_SECONDS, SAFETY, Costs, TimeBudget, cost

    budget = TimeBudget(100.0, started=clock[0], costs=Costs(step=1.0, validation=5.0, checkpoint=1.0, export=2.0))
    available = 100 * (1 - SAFETY) - FINISH_SECONDS  # 94 s: nothing elapsed yet
    total = budget.plan(done=0, steps_per_epoch=10, cap=None, save_every=0, validates=True)
    # 57 steps: 57 s of steps, 5 epoch ends (5 validations + 5 checkpoints), a last validation mid-epoch, the export.
    assert total == 57 and cost(budget.costs, 0, 57, 10, 0, True) == 94.0 <= available
    assert cost(budget.costs, 0, 58, 10, 0, True) > available
    assert budget.plan(done=0, steps_per_epoch=10, cap=30, save_every=0, validates=True) == 30  # --epochs 3
    clock[0] += 60  # a minute gone: 34 s left, no validation set: 29 steps + 2 checkpoints + the export = 33 s
    assert budget.plan(done=0, steps_per_epoch=10, cap=None, save_every=0, validates=False) == 29


def test_step_time_is_the_median_after_the_first_steps_and_the_guard_follows_slower_steps(clock):
    from train.budget import MEASURED_STEPS, UNTIMED_STEPS, TimeBudget

    budget = TimeBudget(100.0, started=clock[0])
    durations = [9.0, 4.0] + [1.0, 1.1, 0.9, 5.0, 1.0]  # two untimed steps, then one slow step among five
    known = []
    for d in durations:
        clock[0] += d
        known.append(budget.step_done())
    assert known == [False] * (UNTIMED_STEPS + MEASURED_STEPS - 1) + [True]
    assert budget.costs.step == 1.0
    assert not budget.must_stop(done=7, steps_per_epoch=100, save_every=0, validates=False)
    for _ in range(MEASURED_STEPS):  # the machine got busy: 13 s a step, 7 s left (enough for a 1 s step)
        clock[0] += 13.0
        budget.step_done()
    assert budget.must_stop(done=12, steps_per_epoch=100, save_every=0, validates=False) and budget.stopped_early


def test_a_budgeted_run_ends_exported_within_its_budget(tmp_path):
    from train.budget import MEASURED_STEPS, UNTIMED_STEPS
    from train.config import TrainConfig
    from train.loop import train
    from train.metrics import read_metrics

    make_shapes_corpus(tmp_path / "c", per_class=3)
    budget = 30.0
    summary = train(TrainConfig(data=[str(tmp_path / "c" / "captions.csv")], output=str(tmp_path / "run"),
                                model="clipsearch-tiny", batch_size=8, val_fraction=0.25, lr=1e-3, progress=False,
                                time_budget=budget))
    report = summary["time_budget"]
    assert report["planned_steps"] and report["step_seconds"] > 0 and report["validation_seconds"] > 0, report
    assert summary["steps"] == report["planned_steps"] or report["stopped_early"], (summary["steps"], report)
    # The guarantee the option makes (the guard keeps a reserve for the export; what follows it is small).
    assert report["exported_after_seconds"] <= budget, report
    assert (tmp_path / "run" / "model" / "open_clip_model.safetensors").is_file()
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["time_budget"]["planned_steps"] == report["planned_steps"]
    assert summary["validation"] is not None  # validated at the end even when it ends mid-epoch
    lrs = {r["step"]: r["train/lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "train/lr" in r}
    if not report["stopped_early"] and report["planned_steps"] >= 2 * (UNTIMED_STEPS + MEASURED_STEPS):
        # the cosine ran its course (beyond the steps that timed it): the last rate is near zero
        assert lrs[max(lrs)] < 0.1 * max(lrs.values()), (lrs, report)


def test_time_budget_is_in_the_help():
    from typer.testing import CliRunner

    from search.cli import app

    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "--time-budget" in result.output and "schedule" in result.output
