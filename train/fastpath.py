"""The fastest correct way to run a training step on this machine, chosen as measured.

- bf16 autocast on a CPU only where the CPU computes bf16 natively (AVX512-BF16 or AMX) and the image tower
  is convolutional: emulated bf16 is slower than fp32, and even native bf16 does not speed up a ViT, while
  convolutional towers gain (BENCHMARKS.md, "Figures behind choices in the code", training).
- Channels-last memory for convolutional towers (their convolutions' fast layout on CPUs and GPUs); a ViT's
  one convolution, the patch embedding, gains nothing from it.
- Re-parameterisation (MobileOne/FastViT branches folded into one convolution) is an inference-only rewrite:
  a folded model trains as a different model and no longer matches its config, so training keeps the branches.
"""

from __future__ import annotations

import torch

from encoders.inference import native_bf16


def transformer_image_tower(model: torch.nn.Module) -> bool:
    """A ViT (open_clip's own, a timm ViT or an EVA); False for ResNets, ConvNeXts and hybrids like FastViT."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    trunk = type(getattr(visual, "trunk", None)).__name__  # timm towers
    return isinstance(visual, VisionTransformer) or "VisionTransformer" in trunk or trunk.startswith("Eva")


def cpu_precision(model: torch.nn.Module) -> str:
    return "bf16" if native_bf16() and not transformer_image_tower(model) else "fp32"


def wants_channels_last(model: torch.nn.Module) -> bool:
    return not transformer_image_tower(model)


def to_channels_last(model: torch.nn.Module) -> None:
    model.visual.to(memory_format=torch.channels_last)
