"""A loaded CLIP model that turns pictures and texts into L2-normalised float32 vectors."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

# isort: off
from . import openmp  # noqa: F401  (before torch: its threads wait passively)
import torch
# isort: on
from PIL import Image

from .images import prepare_image
from .inference import CUDA, EAGER, InferencePath
from .preprocess import SplitPreprocess
from .spec import ModelFingerprint, ModelSpec

TEXT_BATCH = 256


def best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class ClipEncoder:
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    spec: ModelSpec
    fingerprint: ModelFingerprint
    _max_cuda_batch: int | None = field(default=None, repr=False)  # set when a batch ran out of GPU memory
    inference: str = EAGER  # the image tower's path (encoders/inference.py); the tower as built until chosen
    _path: InferencePath = field(default=InferencePath(), repr=False)

    @property
    def dim(self) -> int:
        return self.fingerprint.embed_dim

    @property
    def logit_scale(self) -> float | None:
        scale = getattr(self.model, "logit_scale", None)
        return None if scale is None else float(scale.exp().item())

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @functools.cached_property
    def split(self) -> SplitPreprocess:
        """The preprocess split into per-picture and per-batch steps (what the indexer's workers run)."""
        return SplitPreprocess(self.preprocess)

    def image_tensor(self, image: Image.Image) -> torch.Tensor:
        """One decoded picture → the model's input tensor, prepared exactly as in training."""
        return self.preprocess(prepare_image(image))

    def use_inference(self, name: str) -> None:
        """Run the image tower on this path from now on (``inference.settle`` decides which); the text tower
        is untouched."""
        if self.device.type == "cuda" or name == CUDA:
            self.inference = CUDA
            return
        path = InferencePath.parse(name)
        self.model.visual = path.tower(self.model.visual)
        self.inference, self._path = name, path

    def _autocast(self):
        # fp16 autocast pays on CUDA; on CPU bf16 only where the chosen path says (encoders/inference.py).
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_images(self, batch: torch.Tensor | np.ndarray | Sequence[Image.Image]) -> np.ndarray:
        """A batch of preprocessed pictures (N×3×H×W, a tensor or ``split.array``'s array) or PIL pictures → N×dim
        unit vectors.

        On CUDA: the batch goes through pinned memory with a non-blocking copy, runs under fp16
        autocast, and a batch that does not fit is split in halves (remembered for the next
        calls) instead of ending the run. On CPU: the inference path in use (fp32 as built until one is chosen).
        """
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        elif not isinstance(batch, torch.Tensor):
            batch = torch.stack([self.image_tensor(image) for image in batch])
        if self.device.type != "cuda":
            with self._path.autocast():
                return self.model.encode_image(self._path.input(batch), normalize=True).float().numpy()
        return self._encode_cuda(batch)

    def _encode_cuda(self, batch: torch.Tensor) -> np.ndarray:
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        start = 0
        while start < len(batch):
            size = min(len(batch) - start, self._max_cuda_batch or len(batch))
            try:
                part = batch[start:start + size]
                if not part.is_pinned():
                    part = part.pin_memory()
                with self._autocast():
                    features = self.model.encode_image(part.to(self.device, non_blocking=True), normalize=True)
                out[start:start + size] = features.float().cpu().numpy()
                start += size
            except torch.cuda.OutOfMemoryError:
                if size == 1:
                    raise
                torch.cuda.empty_cache()
                self._max_cuda_batch = max(1, size // 2)  # back off, and stay there for the rest of the run
        return out

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_BATCH) -> np.ndarray:
        """Texts → len(texts)×dim unit vectors, in batches so long lists fit in memory."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
            with self._autocast():
                features = self.model.encode_text(tokens, normalize=True)
            out[start:start + len(tokens)] = features.float().cpu().numpy()
        return out
