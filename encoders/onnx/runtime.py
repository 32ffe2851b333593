"""ONNX Runtime sessions for the exported towers: one way to open them, without torch."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


def onnx_available(export: bool = False) -> bool:
    """onnxruntime runs a tower; exporting one also needs the `onnx` package."""
    names = ("onnxruntime", "onnx") if export else ("onnxruntime",)
    return all(importlib.util.find_spec(name) is not None for name in names)


def busy() -> bool:
    """More runnable work than cores: extra threads then mostly wait for a core."""
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def open_session(graph: Path, prepack: bool = True, threads: int | None = None):
    """A CPU session on ``graph``, threads waiting passively (they share the cores with decoders and other work).

    Graph optimisation is off: it costs most of a second at every load and saved nothing measurable, on one
    short query nor on a batch of pictures (see BENCHMARKS.md, "Figures behind choices in the code").
    ``prepack``: lay the weights out for the matrix kernels while loading: a slower load for faster batches,
    worth it unless a single input is all the session will see.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads or (1 if busy() else min(4, os.cpu_count() or 1))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
