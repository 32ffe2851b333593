"""Exporting a model's text tower to ONNX beside a library, checked against PyTorch (needs torch and `onnx`).

Done once per library and model, by the first query that loads the PyTorch model (the query engine
decides when); later text queries run the export in ONNX Runtime. Only models whose tokenizer ``tokenizer.py``
reproduces are exported: open_clip's standard ``SimpleTokenizer``, and its ``HFTokenizer`` over a Hugging Face
fast tokenizer (SigLIP's, SigLIP2's), whose file is saved beside the tower. Any other keeps its text queries in
PyTorch, and the refusal is recorded so that it is not tried again.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..onnx.export import ExportRefused, export_folder, export_graph, install, tower_module, vectors_agree
from ..onnx.sidecar import TEXT, tower_files
from .onnx_runtime import OnnxTextEncoder
from .tokenizer import CLEANERS, text_tokenizer

# Texts both to check the tokenizer on (awkward ones: punctuation, '_', HTML entities, accents, scripts without
# spaces, emoji, nothing, past any context length) and to compare the two towers' vectors on.
PROBE_TEXTS = ("a photo of a dog.", "golden retriever on a beach", "receipt", "Ünïcödé & emoji 🐶 test", "",
               "RECEIPT!!  it's what we'd've done_now (4 cats, 12 dogs & 1 bird)?", "café &amp; crème brûlée",
               "日本語のテキスト", "   ", "a " * 80 + "very long caption that gets truncated")
MIN_COSINE = 0.999

__all__ = ["ExportRefused", "export_text_tower"]


def _clip_settings(tok) -> dict:
    """What ``ClipTokenizer`` needs, if ``tok`` (a ``SimpleTokenizer``) is exactly what it reproduces."""
    if getattr(tok, "reduction_fn", None) is not None or getattr(tok.clean_fn, "__name__", "") != "_clean_lower":
        raise ExportRefused("tokenizer uses a non-default cleaning or reduction")
    if tok.vocab_size != 49408:
        raise ExportRefused("tokenizer has extra special tokens")
    return {"kind": "clip", "context_length": int(tok.context_length)}


def _hub_settings(tok, tokenizer_file: Path) -> dict:
    """What ``HubTokenizer`` needs to reproduce ``tok`` (an ``HFTokenizer``); saves its Rust tokenizer's file."""
    from open_clip.tokenizer import get_clean_fn

    if tok.tokenizer_mode:
        raise ExportRefused(f"tokenizer mode '{tok.tokenizer_mode}' of the Hugging Face tokenizer")
    clean = next((name for name in CLEANERS if get_clean_fn(name) is tok.clean_fn), None)
    if clean is None:
        raise ExportRefused("the Hugging Face tokenizer has a cleaning of its own")
    hf = tok.tokenizer
    if not getattr(hf, "is_fast", False) or getattr(hf, "backend_tokenizer", None) is None:
        raise ExportRefused(f"{type(hf).__name__} is not a fast (Rust) Hugging Face tokenizer")
    if hf.pad_token is None:
        raise ExportRefused("the Hugging Face tokenizer has no padding token")
    tokenizer_file.write_text(hf.backend_tokenizer.to_str(), encoding="utf-8")
    return {"kind": "hub", "context_length": int(tok.context_length), "clean": clean,
            "strip_sep_id": int(hf.sep_token_id) if tok.strip_sep_token and hf.sep_token_id is not None else None,
            "pad_id": int(hf.pad_token_id), "pad_token": str(hf.pad_token), "pad_type_id": int(hf.pad_token_type_id),
            "padding_side": hf.padding_side, "truncation_side": hf.truncation_side,
            "split_special_tokens": bool(hf.split_special_tokens), "class": type(hf).__name__}


def tokenizer_settings(tok, tokenizer_file: Path) -> dict:
    """The sidecar's description of the torch-free tokenizer that stands for ``tok``, or ExportRefused."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if type(tok) is SimpleTokenizer:
        return _clip_settings(tok)
    if type(tok) is HFTokenizer:
        return _hub_settings(tok, tokenizer_file)
    raise ExportRefused(f"tokenizer {type(tok).__name__} is neither open_clip's SimpleTokenizer nor its HFTokenizer")


def export_text_tower(encoder, folder: str | os.PathLike) -> Path:
    """Export ``encoder``'s text tower beside the library, verify it, and return the graph file. Raises
    ``ExportRefused`` when ONNX Runtime cannot match PyTorch."""
    import torch

    fingerprint = encoder.fingerprint.id
    probes = list(PROBE_TEXTS)
    reference_tokens = encoder.tokenizer(probes).numpy()
    with export_folder(folder, fingerprint, TEXT) as (work, files):
        made = tower_files(work, fingerprint, TEXT)
        settings = tokenizer_settings(encoder.tokenizer, made.tokenizer)
        if not np.array_equal(text_tokenizer(settings, made.tokenizer)(probes), reference_tokens):
            raise ExportRefused("the torch-free tokenizer does not reproduce this model's tokens")
        example = torch.from_numpy(reference_tokens[:2]).to(next(encoder.model.parameters()).device)
        tower = tower_module(encoder.model, lambda model, tokens: model.encode_text(tokens, normalize=True))
        export_graph(tower, example, "tokens", made.graph, files.weights.name)
        meta = {"fingerprint": fingerprint, "architecture": encoder.fingerprint.architecture,
                "weights": encoder.fingerprint.weights, "embed_dim": encoder.dim, "logit_scale": encoder.logit_scale,
                "tokenizer": settings, "torch": torch.__version__}
        meta["probe_min_cosine"] = vectors_agree(OnnxTextEncoder(made, meta).encode_texts(probes),
                                                 encoder.encode_texts(probes), MIN_COSINE)
        return install(work, files, meta, TEXT)
