"""Contrastive objectives: open_clip's ClipLoss (softmax) and SigLipLoss (sigmoid).

Under DDP, ClipLoss gathers features from every rank *with* gradients and each rank
computes the rows of its own pairs (``local_loss``); DDP's gradient average then equals the
gradient of the loss over the global batch.
"""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss, SigLipLoss


def make_loss(kind: str, rank: int = 0, world_size: int = 1) -> torch.nn.Module:
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)


def contrastive_loss(loss_fn: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                     scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The loss in float32 whatever the autocast precision; ``scale`` is exp(logit_scale)."""
    image_features, text_features, scale = image_features.float(), text_features.float(), scale.float()
    if isinstance(loss_fn, SigLipLoss):
        return loss_fn(image_features, text_features, scale, bias.float())
    return loss_fn(image_features, text_features, scale)
