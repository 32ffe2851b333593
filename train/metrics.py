"""Where numbers go: metrics.jsonl, TensorBoard, and a PNG of the curves at the end."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from encoders.files import atomic_write


def missing(piece: str, package: str, error: BaseException) -> None:
    """One line for an optional piece that cannot be made; the run goes on (metrics.jsonl is the record)."""
    reason = f"the {package} package is missing (pip install {package})" if isinstance(error, ImportError) \
        else f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    print(f"note: {piece} not written: {reason}", file=sys.stderr, flush=True)


class MetricsLog:
    def __init__(self, output: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output / "tensorboard"))
            except Exception as e:  # TensorBoard is optional: JSONL is the record
                missing("TensorBoard log", "tensorboard", e)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("epoch",):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, png: Path) -> Path | None:
    """Training loss and validation recall against the optimizer step; never fails the run (says why not)."""
    try:
        return _plot(metrics_path, png)
    except Exception as e:
        missing(png.name, "matplotlib", e)
        return None


def _plot(metrics_path: Path, png: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    loss = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    recall_keys = ("val/text_to_image/recall@1", "val/text_to_image/recall@5", "val/image_to_text/recall@1",
                   "val/zero_shot/top1")
    recall = {k: {r["step"]: r[k] for r in rows if k in r} for k in recall_keys}
    recall = {k: v for k, v in recall.items() if v}
    if not loss:
        return None
    fig, axes = plt.subplots(1, 2 if recall else 1, figsize=(11 if recall else 6, 4), squeeze=False)
    ax = axes[0][0]
    steps = sorted(loss)
    ax.plot(steps, [loss[s] for s in steps], lw=1)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    if recall:
        ax = axes[0][1]
        for key, curve in recall.items():
            s = sorted(curve)
            ax.plot(s, [curve[x] for x in s], marker="o", label=key.removeprefix("val/"))
        ax.set(title="validation", xlabel="step", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return png
