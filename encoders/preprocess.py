"""The model's preprocess split in two: PIL steps per picture (in workers), tensor steps per batch.

open_clip's preprocess is Resize → CenterCrop → RGB → ToTensor → Normalize. The PIL steps
hand back a small uint8 array (224×224×3 = 150 kB for ViT-B-32) that the indexer's decode
workers send back and the trainer's validation keeps in memory; the tensor steps run once per
batch. The result is bit-for-bit what ``preprocess(image)`` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # the indexer's workers and a run with nothing to embed never import torch
    import torch

_TO_TENSOR = ("ToTensor", "MaybeToTensor")


class SplitPreprocess:
    """The model's preprocess as PIL steps (per picture, in workers) and tensor steps (per batch)."""

    def __init__(self, preprocess: Callable[[Image.Image], torch.Tensor]):
        self.preprocess = preprocess
        self.pil_steps: list[Callable] = []
        self.fast = False
        steps = list(getattr(preprocess, "transforms", []) or [])
        names = [type(t).__name__ for t in steps]
        if not any(n in _TO_TENSOR for n in names):
            return
        cut = next(i for i, n in enumerate(names) if n in _TO_TENSOR)
        after = steps[cut + 1:]
        if any("Random" in n for n in names) or not all(type(t).__name__ == "Normalize" for t in after):
            return
        self.pil_steps = steps[:cut]
        self.normalize = [(list(t.mean), list(t.std)) for t in after]
        self.fast = True

    def pil(self, image: Image.Image) -> np.ndarray:
        """In a worker: the PIL steps (fast) or just the decoded picture (fallback), as uint8 H×W×C."""
        if self.fast:
            for step in self.pil_steps:
                image = step(image)
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """In the main process: uint8 arrays → the model's N×3×H×W input."""
        import torch

        if not self.fast:
            return torch.stack([self.preprocess(Image.fromarray(a)) for a in arrays])
        from torchvision.transforms import functional as F

        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
        for mean, std in self.normalize:
            batch = F.normalize(batch, mean, std)
        return batch
