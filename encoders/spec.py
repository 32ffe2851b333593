"""What model fills a library: the user's choice (``ModelSpec``) and its identity (``ModelFingerprint``)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

# The default model is the best published retrieval per CPU-second on this machine among the candidates not worse
# than CLIP ViT-B-32 laion2b on ImageNet, COCO nor CPU per picture, whose weights' licence allows searching one's own
# photos (BENCHMARKS.md, "The default model"; README "Models"). SigLIP 2 B/32 runs in bf16 at 0.5-0.7x ViT-B-32's CPU
# where the CPU multiplies bf16 itself, and a GPU makes the CPU cost moot; on other CPUs it costs 1.2-1.6x, and ViT-B-32
# stays. Libraries keep the model they were filled with, whatever machine opens them.
BF16_DEFAULT = ("ViT-B-32-SigLIP2-256", "webli")
PLAIN_DEFAULT = ("ViT-B-32", "laion2b_s34b_b79k")
DEFAULT_WEIGHTS = dict((BF16_DEFAULT, PLAIN_DEFAULT))  # either default model named alone gets these weights
TINY_MODEL = "clipsearch-tiny"
NO_WEIGHTS = "none"
HUB_PREFIX = "hf-hub:"
# The seed that makes `--pretrained none` the same random model in every process, so a
# library indexed with it can still be queried.
RANDOM_INIT_SEED = 0
# Forces the image tower's inference path (encoders/inference.py), as `--inference` does.
INFERENCE_ENV = "CLIPSEARCH_INFERENCE"


class DefaultModel(NamedTuple):
    model: str
    pretrained: str
    why: str


def default_model() -> DefaultModel:
    """The default model on this machine, and why (for the note a new library prints)."""
    from .machine import bf16_cpu, nvidia_gpu

    if bf16_cpu() or nvidia_gpu():
        return DefaultModel(*BF16_DEFAULT, "the default where the CPU computes bf16 natively or a GPU is present")
    return DefaultModel(*PLAIN_DEFAULT, "the default on CPUs without native bf16, where it is the cheapest; "
                        f"--model {BF16_DEFAULT[0]} retrieves better for 1.2-1.6x its CPU per picture")


class ModelError(Exception):
    """A model that cannot be loaded as asked; the message says what to do instead."""


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip architecture plus exactly one source of weights.

    ``pretrained`` is an open_clip tag (``webli``, ``laion2b_s34b_b79k``), a Hugging Face hub id
    (``hf-hub:org/repo``) or ``none`` for random weights; ``checkpoint`` is a local file
    (``.safetensors``/``.pt``, needs ``model``) or a folder in open_clip's hub format, which
    carries its own architecture. A hub repo carries its own architecture too: ``model`` is then
    the hub id itself (open_clip's name for it), or a zoo name that must match the repo's config.
    """

    model: str
    pretrained: str | None = None
    checkpoint: str | None = None

    @classmethod
    def from_options(cls, model: str | None, pretrained: str | None, checkpoint: str | None) -> ModelSpec:
        if checkpoint is not None:
            if pretrained is not None:
                raise ModelError("give either --pretrained or --checkpoint, not both")
            path = Path(checkpoint).expanduser()
            if not path.exists():
                raise ModelError(f"checkpoint not found: {checkpoint}")
            if path.is_file() and model is None:
                raise ModelError(f"--checkpoint {checkpoint} is a weights file: name its architecture with --model")
            return cls(model=model or "", pretrained=None, checkpoint=str(path.resolve()))
        if model is None and pretrained is not None and pretrained.startswith(HUB_PREFIX):
            model = pretrained  # the hub repo's own architecture
        if model is not None and model.startswith(HUB_PREFIX):
            if pretrained not in (None, model):
                raise ModelError(f"--model {model} is a hub repo with its own weights: leave out --pretrained")
            return cls(model=model, pretrained=model, checkpoint=None)
        model = model or default_model().model
        if pretrained is None:
            pretrained = DEFAULT_WEIGHTS.get(model) or (NO_WEIGHTS if model == TINY_MODEL else None)
        if pretrained is None:
            raise ModelError(f"--model {model} needs weights: --pretrained TAG, --pretrained hf-hub:ORG/REPO, "
                             "--checkpoint PATH or --pretrained none")
        return cls(model=model, pretrained=pretrained, checkpoint=None)

    @property
    def is_hub(self) -> bool:
        return bool(self.pretrained and self.pretrained.startswith(HUB_PREFIX))

    @property
    def is_random(self) -> bool:
        return self.checkpoint is None and self.pretrained == NO_WEIGHTS

    @property
    def weights(self) -> str:
        """Where the weights come from, as recorded in a library and shown to users."""
        if self.checkpoint:
            return f"checkpoint:{self.checkpoint}"
        if self.is_random:
            return f"random-init:seed={RANDOM_INIT_SEED}"
        if self.is_hub:
            return self.pretrained
        return f"pretrained:{self.pretrained}"

    @classmethod
    def from_weights(cls, model: str, weights: str) -> ModelSpec:
        """The inverse of ``weights``: rebuild the spec a library was filled with."""
        kind, _, value = weights.partition(":")
        if kind == "checkpoint":
            return cls(model=model, pretrained=None, checkpoint=value)
        if kind == "random-init":
            return cls(model=model, pretrained=NO_WEIGHTS)
        if weights.startswith(HUB_PREFIX):
            return cls(model=model, pretrained=weights)
        return cls(model=model, pretrained=value)


@dataclass(frozen=True)
class ModelFingerprint:
    """The identity of an embedding space: two encoders with equal fingerprints give equal vectors."""

    architecture: str
    weights: str
    weights_digest: str
    embed_dim: int

    @property
    def id(self) -> str:
        payload = json.dumps([self.architecture, self.weights_digest, self.embed_dim])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {**asdict(self), "id": self.id}


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
