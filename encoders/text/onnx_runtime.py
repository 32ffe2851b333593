"""The exported text tower in ONNX Runtime: the same vectors as PyTorch's (checked at export), without torch."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .sidecar import READY, export_state, read_meta, tower_files
from .tokenizer import ClipTokenizer


def onnx_available(export: bool = False) -> bool:
    """onnxruntime runs the tower; exporting it also needs the `onnx` package."""
    names = ("onnxruntime", "onnx") if export else ("onnxruntime",)
    return all(importlib.util.find_spec(name) is not None for name in names)


def busy() -> bool:
    """More runnable work than cores: extra threads then mostly wait for a core."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


class OnnxTextEncoder:
    """Texts → unit vectors with the exported text tower; a ``TextEncoder`` like ``ClipEncoder``.

    ``prepack``: lay the weights out for the matrix kernels while loading: a slower load for faster texts, worth
    it for a warm session, not for one text (see BENCHMARKS.md, "Figures behind choices in the code").
    """

    def __init__(self, graph: Path, meta: dict, prepack: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Graph optimisation costs most of a second at every load and saves nothing measurable on one short
        # query (see BENCHMARKS.md, "Figures behind choices in the code").
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1 if busy() else min(4, os.cpu_count() or 1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if not prepack:
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.meta = meta
        self.dim = int(meta["embed_dim"])
        self.tokenizer = ClipTokenizer(int(meta["context_length"]))

    @classmethod
    def for_library(cls, folder: str | os.PathLike, fingerprint: str, prepack: bool = True) -> OnnxTextEncoder | None:
        """The tower exported beside the library for this model, or None (not exported, refused, or no
        onnxruntime here)."""
        if not onnx_available() or export_state(folder, fingerprint) != READY:
            return None
        meta = read_meta(folder, fingerprint)
        return cls(tower_files(folder, fingerprint).graph, meta, prepack) if meta is not None else None

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]))
            features = self.session.run(None, {"tokens": tokens})[0].astype(np.float32)
            # The graph already normalises; this only removes float noise.
            out[start:start + len(tokens)] = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        return out
