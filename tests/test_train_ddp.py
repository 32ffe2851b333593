"""Distributed runs: two gloo ranks under torchrun stream their own shards, train a model whose SigLIP bias
the softmax loss never uses, keep a random state per rank, resume exactly, and share one time budget; a
resume with another number of processes is refused in one line. Plus the process-group timeout and the
compile settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shapes_corpus, write_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
               "--nproc-per-node", str(nproc), "-m", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=900)


def _losses(run: Path) -> dict[int, float]:
    from train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shards of 64 samples and a model folder whose model carries a SigLIP bias."""
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.checkpoint import export_model

    root = tmp_path_factory.mktemp("ddp")
    rows = make_shapes_corpus(root, per_class=4)
    pattern = write_shards(root, rows, root / "shards", per_shard=8)
    torch.manual_seed(0)
    model = open_clip.create_model("clipsearch-tiny", init_logit_bias=-10.0)
    export_model(model, {**open_clip.get_model_config("clipsearch-tiny"), "init_logit_bias": -10.0},
                 "clipsearch-tiny", root / "biased")
    return root, pattern


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_ranks_train_resume_exactly_and_refuse_another_world_size(setup):
    from safetensors.torch import load_file

    root, pattern = setup
    common = ["--data", pattern, "--checkpoint", str(root / "biased"), "--loss", "clip", "--epochs", "1",
              "--batch-size", "4", "--workers", "1", "--lr", "1e-4", "--no-progress"]
    first = _torchrun(*common, "--save-every", "2", "--output", str(root / "a"))
    assert first.returncode == 0, first.stderr[-3000:]
    reference = _losses(root / "a")
    assert sorted(reference) == list(range(1, 9))  # 64 samples / (4 × 2 ranks)
    exported = load_file(root / "a" / "model" / "open_clip_model.safetensors")
    assert exported["logit_bias"].item() == -10.0  # frozen: the softmax loss never uses it

    checkpoint = root / "a" / "checkpoints" / "step_00000004.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    assert all(rank["data"]["delivered"] for rank in state["ranks"])

    # Resumed under a time budget the ranks share (one process start less than a run of its own; the budget's
    # planning is tested in tests/test_train_budget.py): it keeps the schedule it was given, so the same losses.
    resumed = _torchrun(*common, "--resume", str(checkpoint), "--time-budget", "600", "--output", str(root / "b"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _losses(root / "b")
    assert sorted(again) == [5, 6, 7, 8]
    for step, loss in again.items():
        assert loss == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    report = json.loads((root / "b" / "summary.json").read_text())["time_budget"]
    assert report["planned_steps"] == 8 and not report["stopped_early"], report
    assert 0 < report["exported_after_seconds"] <= 600, report

    alone = subprocess.run([sys.executable, "-m", "train", *common, "--resume", str(checkpoint), "--output",
                            str(root / "c")], capture_output=True, text=True, cwd=REPO, timeout=600)
    message = alone.stderr.strip()
    assert alone.returncode == 2 and len(message.splitlines()) == 1, message
    assert "2 process(es)" in message and "Traceback" not in message


def test_each_rank_has_its_own_seed():
    from train.loop import rank_seed

    seeds = [rank_seed(7, rank) for rank in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert seeds == [rank_seed(7, rank) for rank in range(4)]


def test_process_group_gets_an_explicit_timeout(monkeypatch):
    import torch.distributed as dist

    from train import distributed

    seen = {}
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    d = distributed.init_distributed(45)
    assert d.world_size == 2 and seen == {"backend": "gloo", "timeout": timedelta(minutes=45)}


def test_compile_keeps_one_graph_for_every_caption_length():
    """Trimmed caption batches change length every batch; marked dynamic, they compile once."""
    import open_clip
    from torch._dynamo.utils import counters

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.loop import mark_text_length_dynamic
    from train.model import TrainingTowers

    def graphs(mark: bool) -> int:
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        towers = TrainingTowers(open_clip.create_model("clipsearch-tiny"))
        compiled = torch.compile(towers, backend="eager")
        for length in (9, 12, 7, 15):
            texts = torch.randint(1, 1000, (2, length))
            if mark:
                mark_text_length_dynamic(texts)
            compiled(torch.randn(2, 3, 64, 64), texts)
        return counters["stats"]["unique_graphs"]

    assert graphs(mark=True) == 1
    assert graphs(mark=False) > 1


def test_compile_with_checkpointing_under_ddp_turns_off_dynamos_ddp_optimizer(tmp_path):
    """As open_clip_train: DDP's graph splitting fails with checkpointed blocks."""
    import open_clip
    import torch.distributed as dist

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.config import TrainConfig
    from train.distributed import Dist
    from train.loop import Run
    from train.model import TrainingTowers

    cfg = TrainConfig(data=["x"], output=str(tmp_path), compile=True, grad_checkpointing=True)
    saved = torch._dynamo.config.optimize_ddp
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        run = Run(cfg, Dist(world_size=2), 0.0)
        run.towers = TrainingTowers(open_clip.create_model("clipsearch-tiny"))
        wrapped = run.wrap()
        assert torch._dynamo.config.optimize_ddp is False and run.no_sync is not None
        assert wrapped is not run.towers
    finally:
        dist.destroy_process_group()
        torch._dynamo.config.optimize_ddp = saved


def test_checkpoint_of_a_single_process_run_records_its_world(tmp_path):
    from train.config import TrainConfig
    from train.loop import train

    make_shapes_corpus(tmp_path, per_class=1)
    train(TrainConfig(data=[str(tmp_path / "captions.csv")], output=str(tmp_path / "run"), model="clipsearch-tiny",
                      epochs=1, batch_size=8, progress=False))
    state = torch.load(next((tmp_path / "run" / "checkpoints").glob("epoch_*.pt")), weights_only=True)
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["world_size"] == 1
