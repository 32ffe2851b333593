"""The model's preprocess split in two: PIL steps per picture (in workers), normalisation per batch, without torch.

open_clip's preprocess is Resize → CenterCrop → RGB → ToTensor → Normalize. ``SplitPreprocess`` reads it into
a *plan* (plain JSON: the PIL steps with their sizes, then mean and std) and runs the plan with Pillow and
numpy: the PIL steps hand back a small uint8 array (224×224×3 = 150 kB for ViT-B-32) that the indexer's decode
workers send back and the trainer's validation keeps in memory; normalisation runs once per batch. The result
is bit for bit what ``preprocess(image)`` gives (tested). The plan is saved beside a library's exported image
tower, so that a run embedding with ONNX Runtime prepares pictures the same way without importing torch.

A preprocess with a step the plan cannot express (a random crop, padding, another transform) is not split:
each picture then goes through ``preprocess`` itself, in the main process.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the indexer's workers and a run with nothing to embed never import torch
    import torch

_TO_TENSOR = ("ToTensor", "MaybeToTensor")
_PIL_FILTERS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # torchvision's names Pillow has too
_TO_RGB = ("MaybeConvertMode", "_convert_to_rgb")  # open_clip's "convert to RGB" step, as a class and as a function


def _step_plan(step) -> list | None:
    """One PIL step of a torchvision preprocess as plain data, or None when the plan cannot express it."""
    kind = step.__name__ if isinstance(step, types.FunctionType) else type(step).__name__
    if kind == "Resize" and step.max_size is None and step.interpolation.value in _PIL_FILTERS:
        size = [step.size] if isinstance(step.size, int) else list(step.size)
        return ["resize", size, step.interpolation.value]
    if kind == "CenterCrop":
        return ["center_crop", list(step.size)]
    if kind in _TO_RGB:
        return ["convert", getattr(step, "mode", "RGB")]
    return None


def plan_of(preprocess: Callable) -> dict | None:
    """``preprocess`` as PIL steps + normalisation, or None (a step the plan cannot express, or a random one)."""
    steps = list(getattr(preprocess, "transforms", []) or [])
    names = [type(t).__name__ for t in steps]
    if not any(n in _TO_TENSOR for n in names):
        return None
    cut = next(i for i, n in enumerate(names) if n in _TO_TENSOR)
    after = steps[cut + 1:]
    if len(after) != 1 or names[cut + 1] != "Normalize":
        return None
    pil_steps = [_step_plan(step) for step in steps[:cut]]
    if any(step is None for step in pil_steps) or not _never_pads(pil_steps):
        return None
    return {"steps": pil_steps, "mean": [float(m) for m in after[0].mean], "std": [float(s) for s in after[0].std]}


def _never_pads(steps: list[list]) -> bool:
    """A centre crop larger than the resized picture pads it (torchvision's fill): not in the plan."""
    resized = None
    for step in steps:
        if step[0] == "resize":
            resized = step[1] * 2 if len(step[1]) == 1 else step[1]
        elif step[0] == "center_crop":
            if resized is None or any(c > r for c, r in zip(step[1], resized, strict=True)):
                return False
    return True


def _resize(image: Image.Image, size: list[int], interpolation: str) -> Image.Image:
    """torchvision's ``resize`` of a PIL picture: one int is the shorter side (the longer one truncated)."""
    w, h = image.size
    if len(size) == 1:
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        new_h, new_w = size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), Image.Resampling[interpolation.upper()])


def _center_crop(image: Image.Image, size: list[int]) -> Image.Image:
    crop_h, crop_w = size
    top, left = int(round((image.height - crop_h) / 2.0)), int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


class SplitPreprocess:
    """The model's preprocess as PIL steps (per picture, in workers) and normalisation (per batch).

    Built from the model's torchvision preprocess (``SplitPreprocess(preprocess)``) or from a saved plan
    (``SplitPreprocess.from_plan``, no torch needed).
    """

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor] | None, plan: dict | None = None):
        self.preprocess = preprocess
        self.plan = plan if plan is not None else plan_of(preprocess)
        self.fast = self.plan is not None
        if self.fast:
            self._mean = np.asarray(self.plan["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
            self._std = np.asarray(self.plan["std"], dtype=np.float32).reshape(1, -1, 1, 1)

    @classmethod
    def from_plan(cls, plan: dict) -> SplitPreprocess:
        return cls(None, plan)

    def pil(self, image: Image.Image) -> np.ndarray:
        """In a worker: the PIL steps (fast) or just the decoded picture (fallback), as uint8 H×W×C."""
        if self.fast:
            for step in self.plan["steps"]:
                if step[0] == "resize":
                    image = _resize(image, step[1], step[2])
                elif step[0] == "center_crop":
                    image = _center_crop(image, step[1])
                else:
                    image = image.convert(step[1])
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)

    def array(self, arrays: list[np.ndarray]) -> np.ndarray:
        """In the main process: uint8 H×W×C arrays → the model's N×C×H×W float32 input, as ToTensor + Normalize
        compute it (fallback: ``preprocess`` itself, per picture)."""
        if not self.fast:
            import torch

            return torch.stack([self.preprocess(Image.fromarray(a)) for a in arrays]).numpy()
        batch = np.stack(arrays).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        return np.ascontiguousarray((batch - self._mean) / self._std)

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """``array`` as a tensor, for the trainer."""
        import torch

        return torch.from_numpy(self.array(arrays))
