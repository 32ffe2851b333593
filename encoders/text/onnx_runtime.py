"""The exported text tower in ONNX Runtime: the same vectors as PyTorch's (checked at export), without torch."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..onnx.runtime import onnx_available, open_session
from ..onnx.sidecar import READY, TEXT, TowerFiles, export_state, read_meta, tower_files
from .tokenizer import text_tokenizer


class OnnxTextEncoder:
    """Texts → unit vectors with the exported text tower; a ``TextEncoder`` like ``ClipEncoder``.

    ``prepack``: a slower load for faster texts, worth it for a warm session, not for one text (see BENCHMARKS.md,
    "Figures behind choices in the code").
    """

    def __init__(self, files: TowerFiles, meta: dict, prepack: bool = True):
        self.session = open_session(files.graph, prepack)
        self.meta = meta
        self.dim = int(meta["embed_dim"])
        self.logit_scale = meta.get("logit_scale")  # exports made before it was recorded lack it (`search tag`)
        self.tokenizer = text_tokenizer(meta["tokenizer"], files.tokenizer)

    @classmethod
    def for_library(cls, folder: str | os.PathLike, fingerprint: str, prepack: bool = True) -> OnnxTextEncoder | None:
        """The tower exported beside the library for this model, or None (not exported, refused, or no
        onnxruntime here)."""
        if not onnx_available() or export_state(folder, fingerprint, TEXT) != READY:
            return None
        meta = read_meta(folder, fingerprint, TEXT)
        return cls(tower_files(folder, fingerprint, TEXT), meta, prepack) if meta is not None else None

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]))
            features = self.session.run(None, {"tokens": tokens})[0].astype(np.float32)
            # The graph already normalises; this only removes float noise.
            out[start:start + len(tokens)] = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        return out
