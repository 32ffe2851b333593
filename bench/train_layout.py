"""Channels-last against the default layout for a training step of a convolutional image tower on this CPU.

    python bench/train_layout.py --models MobileCLIP2-S0 convnext_base --batch 8

Random weights; the image tower alone, forward and backward of a batch, best of 3 after a warm-up, the two layouts
taking turns twice. In the channels-last run the convolutions that read the picture's 3 channels keep the default
layout, and so does the batch: PyTorch 2.14's oneDNN crashes in the backward pass of FastViT's strided 1×1 stem
convolution in channels-last on AVX2 CPUs, the reason `search train` keeps the default layout on CPUs
(train/fastpath.py). Prints wall and CPU seconds a step per layout and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch


def _step(visual: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    began, began_cpu = time.perf_counter(), time.process_time()
    visual(images).float().pow(2).mean().backward()
    visual.zero_grad(set_to_none=True)
    return time.perf_counter() - began, time.process_time() - began_cpu


def _layout(visual: torch.nn.Module, channels_last: bool) -> None:
    for conv in (m for m in visual.modules() if isinstance(m, torch.nn.Conv2d)):
        fast = channels_last and conv.in_channels > 4
        conv.weight.data = conv.weight.data.contiguous(
            memory_format=torch.channels_last if fast else torch.contiguous_format)


def main() -> None:
    import open_clip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["MobileCLIP2-S0", "convnext_base"])
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    for name in args.models:
        visual = open_clip.create_model(name).train().visual
        size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size,) * 2
        images = torch.randn(args.batch, 3, *size)
        best: dict[bool, tuple[float, float]] = {}
        for channels_last in (False, True, False, True):
            _layout(visual, channels_last)
            _step(visual, images)
            best[channels_last] = min([*(_step(visual, images) for _ in range(3)), best.get(channels_last, (1e9, 1e9))])
        (wall, cpu), (wall_cl, cpu_cl) = best[False], best[True]
        print(f"{name}: default {wall:.3f} s ({cpu:.3f} CPU), channels-last {wall_cl:.3f} s ({cpu_cl:.3f} CPU): "
              f"channels-last {wall / wall_cl:.2f}x", flush=True)


if __name__ == "__main__":
    main()
