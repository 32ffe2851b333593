"""An image tower's inference path by name (``reparam-cl-bf16``, ``onnx``): the names read and checked without torch,
so that a mistyped ``--inference`` is refused before the model loads (seconds), and the steps applied to a tower.
What each step does and how a machine's path is chosen: ``encoders.inference``."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING

from .onnx.image import ONNX
from .spec import ModelError

if TYPE_CHECKING:
    import torch

EAGER = "fp32-eager"
CUDA = "cuda-fp16"  # a GPU runs fp16 autocast, as before: nothing to choose
AUTO = "auto"  # forced: measure (or take the cached choice) even where the library recorded a path


@dataclass(frozen=True)
class InferencePath:
    reparam: bool = False
    channels_last: bool = False
    bf16: bool = False

    @property
    def name(self) -> str:
        parts = [part for part, on in (("reparam", self.reparam), ("cl", self.channels_last), ("bf16", self.bf16))
                 if on]
        return "-".join(parts) or EAGER

    @classmethod
    def parse(cls, name: str) -> InferencePath:
        for path in ALL_PATHS:
            if path.name == name:
                return path
        raise ModelError(f"unknown inference path {name!r}; one of: {', '.join(p.name for p in ALL_PATHS)}, "
                         f"{ONNX}, or {AUTO} (measure and choose)")

    def tower(self, visual: torch.nn.Module) -> torch.nn.Module:
        """The image tower prepared for this path (a copy when anything changes; the original stays as built)."""
        import torch

        if self.reparam:
            from timm.utils import reparameterize_model

            visual = reparameterize_model(visual)
        elif self.channels_last:
            visual = copy.deepcopy(visual)
        if self.channels_last:
            visual = visual.to(memory_format=torch.channels_last)
        return visual.eval()

    def input(self, batch: torch.Tensor) -> torch.Tensor:
        import torch

        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def autocast(self):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()


ALL_PATHS = tuple(InferencePath(*steps) for steps in product((False, True), repeat=3))


def check_forced_name(name: str | None, exports: bool) -> None:
    """A forced path's name (``--inference`` or $CLIPSEARCH_INFERENCE), before anything loads: one of the names, and
    ``onnx`` only for a run that can export the tower beside its library (``exports``: `search index`)."""
    if name is None or name == AUTO:
        return
    if name == ONNX:
        if not exports:
            raise ModelError(f"inference path {ONNX}: only `search index` takes it (it exports the image tower beside "
                             "the library)")
        return
    InferencePath.parse(name)
