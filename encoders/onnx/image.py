"""The image tower exported beside a library and run in ONNX Runtime: pictures → unit vectors without torch.

What a `search index` run with a few new pictures needs to start embedding in about a second: the tower's graph,
the model's preprocess as a plan (``encoders.preprocess``), its identity, all read from beside the library.
Exported from PyTorch by a run that has the model loaded (``export_image_tower``), kept only when its vectors of
the probe pictures agree with PyTorch's fp32 ones as every inference path must (``encoders.inference``); whether
a library fills on it is decided there, by measurement, like any other path.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..preprocess import SplitPreprocess
from ..spec import ModelFingerprint
from .export import ExportRefused, export_folder, export_graph, install, tower_module
from .runtime import onnx_available, open_session
from .sidecar import IMAGE, READY, export_state, read_meta, tower_files

ONNX = "onnx"  # the inference path's name, recorded in a library filled on it
# Laying the weights out for the matrix kernels (ONNX Runtime's prepacking) makes a batch ~15 % faster and the
# load ~1 s slower for ViT-B-32: worth it from about this many pictures (BENCHMARKS.md, "Figures behind choices").
PREPACK_FROM_PICTURES = 128


class OnnxImageEncoder:
    """Pictures → unit vectors with the exported image tower: what the indexer needs of an encoder."""

    inference = ONNX
    device = SimpleNamespace(type="cpu")  # the indexer asks a device its type only; ONNX Runtime runs on the CPU

    def __init__(self, graph: Path, meta: dict, fingerprint: ModelFingerprint, prepack: bool = True):
        self.session = open_session(graph, prepack)
        self.meta = meta
        self.fingerprint = fingerprint
        self.split = SplitPreprocess.from_plan(meta["preprocess"])
        self.image_size = tuple(meta["image_size"])

    @property
    def dim(self) -> int:
        return self.fingerprint.embed_dim

    @classmethod
    def for_library(cls, folder: str | os.PathLike, fingerprint: ModelFingerprint,
                    pictures: int | None = None) -> OnnxImageEncoder | None:
        """The tower exported beside the library for this model, or None (not exported, refused, or no
        onnxruntime here). ``pictures``: how many it will embed, when known (a few: it loads faster)."""
        if not onnx_available() or export_state(folder, fingerprint.id, IMAGE) != READY:
            return None
        meta = read_meta(folder, fingerprint.id, IMAGE)
        if meta is None:
            return None
        prepack = pictures is None or pictures >= PREPACK_FROM_PICTURES
        return cls(tower_files(folder, fingerprint.id, IMAGE).graph, meta, fingerprint, prepack)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """The model's N×3×H×W float32 input (``split.array``) → N×dim unit vectors."""
        features = self.session.run(None, {"pixels": np.ascontiguousarray(batch, dtype=np.float32)})[0]
        # The graph already normalises; this only removes float noise.
        return (features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def _normalised_tower(visual, pixels):
    import torch

    return torch.nn.functional.normalize(visual(pixels), dim=-1)


def export_image_tower(encoder, folder: str | os.PathLike) -> OnnxImageEncoder:
    """Export ``encoder``'s image tower beside the library (re-parameterised where it can be: the exact fused
    form), check it against the tower as built on the probe pictures, and open it. Raises ``ExportRefused``."""
    import torch

    from ..inference import InferencePath, agreement, embed, probe_batch, reparameterisable

    if not encoder.split.fast:
        raise ExportRefused("the model's preprocess has steps only torchvision runs")
    visual = encoder.model.visual
    probes = probe_batch(encoder.image_size)
    reference = embed(visual, InferencePath(), probes)
    traced = InferencePath(reparam=reparameterisable(visual)).tower(visual).float()
    fingerprint = encoder.fingerprint
    with export_folder(folder, fingerprint.id, IMAGE) as (work, files):
        graph = work / files.graph.name
        export_graph(tower_module(traced, _normalised_tower), probes[:2], "pixels", graph, files.weights.name)
        meta = {"fingerprint": fingerprint.id, "architecture": fingerprint.architecture, "weights": fingerprint.weights,
                "embed_dim": fingerprint.embed_dim, "image_size": list(encoder.image_size),
                "preprocess": encoder.split.plan, "torch": torch.__version__}
        made = OnnxImageEncoder(graph, meta, fingerprint, prepack=False)
        result = agreement(reference, made.encode_images(probes.numpy()))
        if not result.ok:
            raise ExportRefused(f"ONNX image vectors differ from PyTorch's (cosine {result.min_cosine:.5f}, same "
                                f"top-10: {result.same_top_k})")
        meta["probe_min_cosine"] = result.min_cosine
        install(work, files, meta, IMAGE)
    return OnnxImageEncoder.for_library(folder, fingerprint)
