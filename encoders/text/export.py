"""Exporting a model's text tower to ONNX beside a library, checked against PyTorch (needs torch and `onnx`).

Done once per library and model, by the first query that loads the PyTorch model (the query engine
decides when); later text queries run the export in ONNX Runtime. Only models using open_clip's standard
``SimpleTokenizer`` are exported, since that is what the pure-Python tokenizer reproduces; any other keeps
its text queries in PyTorch, and the refusal is recorded so that it is not tried again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..files import atomic_write
from .onnx_runtime import OnnxTextEncoder
from .sidecar import EXPORT_VERSION, remove_other_towers, tower_files, write_meta
from .tokenizer import ClipTokenizer

PROBE_TEXTS = ("a photo of a dog.", "golden retriever on a beach", "receipt", "Ünïcödé & emoji 🐶 test", "")
MIN_COSINE = 0.999


class ExportRefused(Exception):
    """This model's text side cannot be served by ONNX Runtime; its text queries keep using PyTorch."""


def _tokenizer_settings(encoder) -> int:
    """The context length, if the encoder's tokenizer is exactly what ``ClipTokenizer`` reproduces."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = encoder.tokenizer
    if type(tok) is not SimpleTokenizer:
        raise ExportRefused(f"tokenizer {type(tok).__name__} is not open_clip's SimpleTokenizer")
    if getattr(tok, "reduction_fn", None) is not None or getattr(tok.clean_fn, "__name__", "") != "_clean_lower":
        raise ExportRefused("tokenizer uses a non-default cleaning or reduction")
    if tok.vocab_size != 49408:
        raise ExportRefused("tokenizer has extra special tokens")
    return int(tok.context_length)


@contextlib.contextmanager
def unfused_attention():
    """nn.MultiheadAttention's fused inference kernel has no ONNX export; the plain path computes the same.

    PyTorch takes the fused kernel when there is no attention mask, as in the text towers of
    MobileCLIP and SigLIP (no causal mask).
    """
    import torch

    saved = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(saved)


def _export_graph(encoder, tokens: np.ndarray, graph: Path, weights_name: str) -> None:
    """The text tower (tokens → unit vectors) as ``graph``, its weights beside it as ``weights_name``."""
    import onnx
    import torch

    class TextTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, tokens):
            return self.model.encode_text(tokens, normalize=True)

    device = next(encoder.model.parameters()).device
    example = torch.from_numpy(tokens[:2]).to(device)
    with warnings.catch_warnings(), torch.no_grad(), unfused_attention():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(TextTower(encoder.model).eval(), (example,), str(graph), input_names=["tokens"],
                              output_names=["embedding"],
                              dynamic_axes={"tokens": {0: "batch"}, "embedding": {0: "batch"}},
                              opset_version=17, dynamo=False)
        except Exception as e:  # an operator ONNX has no export for, or a tower the tracer cannot follow
            raise ExportRefused(f"the text tower does not export to ONNX ({type(e).__name__})") from e
    onnx.save_model(onnx.load(str(graph)), str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=weights_name, size_threshold=0)


def export_text_tower(encoder, folder: str | os.PathLike) -> Path:
    """Export ``encoder``'s text tower beside the library, verify it, and return the graph file.

    Made and checked in a temporary folder inside the library folder, then moved into place (flushed to disk
    first, as ``atomic_write`` does), graph after weights, the sidecar last. Two processes exporting the same
    model at once write the same bytes (the same weights, traced the same way), so whichever finishes last
    leaves a whole export. Raises
    ``ExportRefused`` when ONNX Runtime cannot match PyTorch.
    """
    import torch

    folder = Path(folder)
    fingerprint = encoder.fingerprint.id
    files = tower_files(folder, fingerprint)
    context_length = _tokenizer_settings(encoder)
    probes = list(PROBE_TEXTS)
    reference_tokens = encoder.tokenizer(probes).numpy()
    if not np.array_equal(ClipTokenizer(context_length)(probes), reference_tokens):
        raise ExportRefused("the pure-Python tokenizer does not reproduce this model's tokens")
    work = Path(tempfile.mkdtemp(dir=folder, prefix=".text-export."))
    try:
        graph = work / files.graph.name
        _export_graph(encoder, reference_tokens, graph, files.weights.name)
        meta = {"version": EXPORT_VERSION, "fingerprint": fingerprint, "architecture": encoder.fingerprint.architecture,
                "weights": encoder.fingerprint.weights, "embed_dim": encoder.dim, "context_length": context_length,
                "torch": torch.__version__}
        cosine = float((OnnxTextEncoder(graph, meta).encode_texts(probes) * encoder.encode_texts(probes))
                       .sum(axis=1).min())
        if cosine < MIN_COSINE:
            raise ExportRefused(f"ONNX text vectors differ from PyTorch (cosine {cosine:.5f} < {MIN_COSINE})")
        meta["probe_min_cosine"] = cosine
        for made, target in ((work / files.weights.name, files.weights), (graph, files.graph)):
            # The exporter writes by name into its work folder; the finished file moves into atomic_write's
            # temporary file (same folder, no copy), which atomic_write flushes and renames over the target.
            atomic_write(target, lambda tmp, made=made: os.replace(made, tmp))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_meta(files.meta, meta)
    remove_other_towers(folder, fingerprint)
    return files.graph
