"""Contrastive objectives: open_clip's ClipLoss (softmax) and SigLipLoss (sigmoid).

Under DDP, ClipLoss gathers features from every rank *with* gradients and each rank
computes the rows of its own pairs (``local_loss``); DDP's gradient average then equals the
gradient of the loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss


class SmoothedClipLoss(ClipLoss):
    """open_clip's ClipLoss with label smoothing on both directions' targets (its forward has none)."""

    def __init__(self, label_smoothing: float, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = label_smoothing

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        per_image, per_text = self.get_logits(image_features, text_features, logit_scale, logit_bias=logit_bias)
        labels = self.get_ground_truth(image_features.device, per_image.shape[0])
        loss = (F.cross_entropy(per_image, labels, label_smoothing=self.label_smoothing)
                + F.cross_entropy(per_text, labels, label_smoothing=self.label_smoothing)) / 2
        return {"contrastive_loss": loss} if output_dict else loss


def make_loss(kind: str, rank: int = 0, world_size: int = 1, label_smoothing: float = 0.0) -> torch.nn.Module:
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    common = dict(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)
    return SmoothedClipLoss(label_smoothing, **common) if label_smoothing else ClipLoss(**common)


def contrastive_loss(loss_fn: torch.nn.Module, image_features: torch.Tensor, text_features: torch.Tensor,
                     scale: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The loss in float32 whatever the autocast precision; ``scale`` is exp(logit_scale)."""
    image_features, text_features, scale = image_features.float(), text_features.float(), scale.float()
    if isinstance(loss_fn, SigLipLoss):
        return loss_fn(image_features, text_features, scale, bias.float())
    return loss_fn(image_features, text_features, scale)
