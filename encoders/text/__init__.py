"""Texts → unit vectors, two ways behind one interface: the model's PyTorch text tower (``ClipEncoder``) and
the same tower exported to ONNX and run by ONNX Runtime (``OnnxTextEncoder``), which answers a text query
without importing torch (`import torch, open_clip` costs seconds: more than a whole query).

- ``tokenizer.py``: open_clip's BPE tokenizer in plain Python (open_clip's own module imports torch);
- ``onnx_runtime.py``: the exported tower in ONNX Runtime;
- ``export.py``: exporting the tower from PyTorch, checked against it (needs torch);
- ``sidecar.py``: where an export lives beside a library, and its state (ready, refused or missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

__all__ = ["TextEncoder"]


class TextEncoder(Protocol):
    """What the query engine needs of a text tower (``ClipEncoder`` and ``OnnxTextEncoder`` both are one)."""

    @property
    def dim(self) -> int: ...

    @property
    def logit_scale(self) -> float | None:
        """The model's learned temperature (the factor on cosines that makes logits), None when it has none:
        what zero-shot tagging turns scores into probabilities with."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → len(texts)×dim float32 unit vectors."""
        ...
