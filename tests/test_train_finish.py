"""A finished training run never ends in a traceback: a missing optional piece (matplotlib for curves.png,
tensorboard for its log) is said in one line with what to install, and the run still writes its model
and summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shapes_corpus  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HIDE_AND_RUN = ("import sys\n"
                "for name in sys.argv[1].split(','):\n"
                "    sys.modules[name] = None  # import name now raises ImportError, as if not installed\n"
                "sys.argv = ['search', *sys.argv[2:]]\n"
                "from search.cli import main\n"
                "main()\n")


def test_missing_matplotlib_and_tensorboard_are_said_and_the_run_finishes(tmp_path):
    make_shapes_corpus(tmp_path, per_class=1)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", HIDE_AND_RUN, "matplotlib,tensorboard", "train", "--data",
                             str(tmp_path / "captions.csv"), "--model", "clipsearch-tiny", "--epochs", "1",
                             "--batch-size", "8", "--output", str(out), "--no-progress"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert any("curves.png not written" in n and "pip install matplotlib" in n for n in notes), result.stderr
    assert any("TensorBoard log not written" in n and "pip install tensorboard" in n for n in notes), result.stderr
    assert len(notes) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "model" / "open_clip_model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert not (out / "curves.png").exists() and not (out / "tensorboard").exists()
