"""The fastest correct way to run a training step on this machine, chosen as measured.

- On a CPU, the step's precision and attention kernel are measured, once per model and machine, on a few real
  forward and backward passes of the run's own model (a copy of it), and cached beside the indexer's choices
  ($XDG_CACHE_HOME/clipsearch/training.json, keyed as ``encoders.inference`` keys its own). Candidates: fp32,
  and, only where the CPU computes bf16 natively (AVX512-BF16 or AMX; elsewhere it is emulated and slower), bf16
  autocast with PyTorch's fused attention kernel or with its plain ("math") one: on a Zen 4 the fused kernel's
  bf16 backward is 6x slower than fp32's on clipsearch-tiny's short sequences, while on ViT-B-32 it is the faster
  of the two (BENCHMARKS.md, "Figures behind choices in the code", training). bf16 is taken when it beats fp32
  by ``MIN_GAIN``. The loss is computed in fp32 under any of them (``train.loss.contrastive_loss``).
- Channels-last memory for convolutional towers on a GPU (cuDNN's fast layout); a ViT's one convolution, the
  patch embedding, gains nothing from it. Not on a CPU: there it is a wash (MobileCLIP2-S0's and ConvNeXt-B's tower
  steps within 5 % either way, run to run) and PyTorch 2.14's oneDNN crashes in the backward pass of a strided 1×1
  convolution over a picture's 3 channels in that layout on AVX2 CPUs (FastViT's stem; BENCHMARKS.md,
  "Figures behind choices in the code", training).
- Re-parameterisation (MobileOne/FastViT branches folded into one convolution) is an inference-only rewrite:
  a folded model trains as a different model and no longer matches its config, so training keeps the branches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from encoders.inference import MIN_GAIN, cache_file, machine_key, native_bf16, probe_batch, read_cache, update_cache

from .data import trim_tokens
from .loss import make_loss
from .step import accumulate_gradients

PROBE_BATCH = 32  # pictures per measured step: a ViT-B-32 step of 128 takes a minute on 2 cores; the order holds
PROBE_CAPTION = "a photo of a smiling yellow face with open hands"  # an emoji caption's length, as trimmed
ROUNDS = 3  # timed steps per path, taking turns after one untimed step each; the best counts (a busy machine)


@dataclass(frozen=True)
class StepPath:
    bf16: bool = False
    math_attention: bool = False  # PyTorch's plain attention instead of its fused CPU kernel (under bf16 only)

    @property
    def name(self) -> str:
        return ("bf16-math-attention" if self.math_attention else "bf16") if self.bf16 else "fp32"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        if self.math_attention:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        return stack


FP32 = StepPath()
BF16_PATHS = (StepPath(bf16=True), StepPath(bf16=True, math_attention=True))
PATHS = {p.name: p for p in (FP32, *BF16_PATHS)}


def choose(seconds: dict[str, float], native: bool, precision: str | None = None) -> StepPath:
    """The path to train with, from each path's measured seconds a step. ``precision`` forced "bf16": the faster
    bf16 path; not forced: the fastest path, bf16 ones only where ``native`` and ``MIN_GAIN`` faster than fp32."""
    if precision == "bf16":
        return min(BF16_PATHS, key=lambda p: seconds[p.name])
    faster = [p for p in BF16_PATHS if native and seconds[p.name] * MIN_GAIN <= seconds[FP32.name]]
    return min(faster, key=lambda p: seconds[p.name]) if faster else FP32


def measure(towers: torch.nn.Module, loss_kind: str, images: torch.Tensor, texts: torch.Tensor) -> dict[str, float]:
    """Seconds of one forward and backward step of each path, on a copy of the towers: the run's weights,
    gradients, batch-norm statistics and random state stay as they were."""
    towers = copy.deepcopy(towers).train()
    loss_fn = make_loss(loss_kind)  # this process alone: no gathering from other ranks

    def step(path: StepPath) -> float:
        began = time.perf_counter()
        accumulate_gradients(towers, loss_fn, [(images, texts)], path.context)
        towers.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    with torch.random.fork_rng(devices=[]):
        for path in PATHS.values():  # each kernel's first run
            step(path)
        timed = [{name: step(path) for name, path in PATHS.items()} for _ in range(ROUNDS)]
    return {name: min(t[name] for t in timed) for name in PATHS}


def probe_inputs(built, towers, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The indexer's fixed picture-like probes at the model's input size, and one caption for every picture, trimmed
    as the run trims its batches."""
    n = min(batch_size, PROBE_BATCH)
    images, texts = probe_batch(built.image_size, n), built.tokenizer([PROBE_CAPTION] * n)
    return images, trim_tokens(texts) if towers.trims_text else texts


def training_cache() -> Path:
    return cache_file().with_name("training.json")


def step_identity(built, towers: torch.nn.Module, batch_size: int, grad_checkpointing: bool) -> str:
    """What decides a step's speed besides the machine: the architecture, the batch, what trains."""
    trained = sum(p.numel() for p in towers.parameters() if p.requires_grad)
    return json.dumps(["train", built.architecture, min(batch_size, PROBE_BATCH), trained, grad_checkpointing])


def cpu_path(built, towers: torch.nn.Module, cfg, precision: str | None = None) -> StepPath:
    """The path a CPU run takes: fp32 when asked for; otherwise as measured here (cached per model and machine)."""
    if precision == "fp32" or (precision is None and not native_bf16()):
        return FP32
    file, key = training_cache(), machine_key(step_identity(built, towers, cfg.batch_size, cfg.grad_checkpointing))
    seconds = read_cache(file).get(key, {}).get("seconds")
    if not (isinstance(seconds, dict) and set(PATHS) <= set(seconds)):
        seconds = measure(towers, cfg.loss, *probe_inputs(built, towers, cfg.batch_size))
        update_cache(file, key, {"architecture": built.architecture, "batch": min(cfg.batch_size, PROBE_BATCH),
                                 "seconds": {name: round(s, 4) for name, s in seconds.items()}})
    return choose(seconds, native_bf16(), precision)


def transformer_image_tower(model: torch.nn.Module) -> bool:
    """A ViT (open_clip's own, a timm ViT or an EVA); False for ResNets, ConvNeXts and hybrids like FastViT."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    trunk = type(getattr(visual, "trunk", None)).__name__  # timm towers
    return isinstance(visual, VisionTransformer) or "VisionTransformer" in trunk or trunk.startswith("Eva")


def wants_channels_last(model: torch.nn.Module, device: torch.device) -> bool:
    return device.type == "cuda" and not transformer_image_tower(model)


def to_channels_last(model: torch.nn.Module) -> None:
    model.visual.to(memory_format=torch.channels_last)
