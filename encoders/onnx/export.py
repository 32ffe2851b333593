"""Tracing a tower to ONNX beside a library and moving the checked files into place (needs torch and `onnx`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .sidecar import EXPORT_VERSION, TowerFiles, remove_towers, tower_files, write_meta


class ExportRefused(Exception):
    """This tower cannot be served by ONNX Runtime as PyTorch serves it; it keeps running in PyTorch."""


@contextlib.contextmanager
def unfused_attention():
    """nn.MultiheadAttention's fused inference kernel has no ONNX export; the plain path computes the same.

    PyTorch takes the fused kernel when there is no attention mask: in every ViT image tower, and in the text
    towers of MobileCLIP and SigLIP (no causal mask).
    """
    import torch

    saved = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(saved)


def tower_module(owner, forward):
    """``forward(owner, x)`` as a module to trace, ``owner`` (the model or its image tower) registered in it so
    that its weights become the graph's."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.owner = owner

        def forward(self, x):
            return forward(self.owner, x)

    return Tower()


def export_graph(module, example, input_name: str, graph: Path, weights_name: str) -> None:
    """``module`` (one input with a batch axis → unit vectors) as ``graph``, its weights beside it as
    ``weights_name``."""
    import onnx
    import torch

    with warnings.catch_warnings(), torch.no_grad(), unfused_attention():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module.eval(), (example,), str(graph), input_names=[input_name],
                              output_names=["embedding"],
                              dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        except Exception as e:  # an operator ONNX has no export for, or a tower the tracer cannot follow
            raise ExportRefused(f"the tower does not export to ONNX ({type(e).__name__})") from e
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=weights_name, size_threshold=0)


@contextlib.contextmanager
def export_folder(folder: str | os.PathLike, fingerprint: str, tower: str) -> Iterator[tuple[Path, TowerFiles]]:
    """A temporary folder inside the library folder to export and check in, and where the files will go."""
    work = Path(tempfile.mkdtemp(dir=folder, prefix=f".{tower}-export."))
    try:
        yield work, tower_files(folder, fingerprint, tower)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install(work: Path, files: TowerFiles, meta: dict, tower: str) -> Path:
    """Move a checked export from ``work`` into place: weights, then graph, then a tokenizer if the export made
    one (each flushed to disk first, as ``atomic_write`` does), the sidecar last. Two processes exporting the same
    model at once write the same bytes (the same weights, traced the same way), so whichever finishes last leaves a
    whole export."""
    for target in (files.weights, files.graph, files.tokenizer):
        made = work / target.name
        if target is files.tokenizer and not made.exists():
            continue
        # The exporter writes by name into its work folder; the finished file moves into atomic_write's
        # temporary file (same folder, no copy), which atomic_write flushes and renames over the target.
        atomic_write(target, lambda tmp, made=made: os.replace(made, tmp))
    write_meta(files.meta, {"version": EXPORT_VERSION, **meta})
    remove_towers(files.meta.parent, tower, keep=meta["fingerprint"])
    return files.graph


def vectors_agree(ours: np.ndarray, reference: np.ndarray, min_cosine: float) -> float:
    """The smallest cosine between the exported tower's vectors and PyTorch's, or ExportRefused below the bound."""
    cosine = float((ours * reference).sum(axis=1).min())
    if cosine < min_cosine:
        raise ExportRefused(f"ONNX vectors differ from PyTorch (cosine {cosine:.5f} < {min_cosine})")
    return cosine
