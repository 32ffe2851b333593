"""Exporting a model's text tower to ONNX beside a library, checked against PyTorch (needs torch and `onnx`).

Done once per library and model, by the first query that loads the PyTorch model (the query engine
decides when); later text queries run the export in ONNX Runtime. Only models using open_clip's standard
``SimpleTokenizer`` are exported, since that is what the pure-Python tokenizer reproduces; any other keeps
its text queries in PyTorch, and the refusal is recorded so that it is not tried again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..onnx.export import ExportRefused, export_folder, export_graph, install, tower_module, vectors_agree
from ..onnx.sidecar import TEXT
from .onnx_runtime import OnnxTextEncoder
from .tokenizer import ClipTokenizer

PROBE_TEXTS = ("a photo of a dog.", "golden retriever on a beach", "receipt", "Ünïcödé & emoji 🐶 test", "")
MIN_COSINE = 0.999

__all__ = ["ExportRefused", "export_text_tower"]


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


def export_text_tower(encoder, folder: str | os.PathLike) -> Path:
    """Export ``encoder``'s text tower beside the library, verify it, and return the graph file. Raises
    ``ExportRefused`` when ONNX Runtime cannot match PyTorch."""
    import torch

    fingerprint = encoder.fingerprint.id
    context_length = _tokenizer_settings(encoder)
    probes = list(PROBE_TEXTS)
    reference_tokens = encoder.tokenizer(probes).numpy()
    if not np.array_equal(ClipTokenizer(context_length)(probes), reference_tokens):
        raise ExportRefused("the pure-Python tokenizer does not reproduce this model's tokens")
    with export_folder(folder, fingerprint, TEXT) as (work, files):
        graph = work / files.graph.name
        example = torch.from_numpy(reference_tokens[:2]).to(next(encoder.model.parameters()).device)
        tower = tower_module(encoder.model, lambda model, tokens: model.encode_text(tokens, normalize=True))
        export_graph(tower, example, "tokens", graph, files.weights.name)
        meta = {"fingerprint": fingerprint, "architecture": encoder.fingerprint.architecture,
                "weights": encoder.fingerprint.weights, "embed_dim": encoder.dim, "context_length": context_length,
                "torch": torch.__version__}
        meta["probe_min_cosine"] = vectors_agree(OnnxTextEncoder(graph, meta).encode_texts(probes),
                                                 encoder.encode_texts(probes), MIN_COSINE)
        return install(work, files, meta, TEXT)
