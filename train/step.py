"""One optimizer step over an effective batch, with accumulation correct for a contrastive loss.

With ``accum`` micro-batches, the loss must see the features of the whole effective batch
(every pair is every other pair's negative). As in open_clip's ``accum_freq``: first encode
every micro-batch without gradients, then re-encode each micro-batch with gradients, put its
fresh features among the cached ones, and back-propagate the full loss. Summed over the
micro-batches this gives exactly the full-batch gradient; the temperature (and SigLIP bias),
which appear once in the loss, take their gradient in one pass only.
"""

from __future__ import annotations

import contextlib

import torch

from .loss import contrastive_loss


def _forward(model, images, texts):
    out = model(images, texts)
    return out["image_features"], out["text_features"], out["logit_scale"], out.get("logit_bias")


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def accumulate_gradients(model, loss_fn, micro_batches, autocast=contextlib.nullcontext, scaler=None,
                         no_sync=None) -> torch.Tensor:
    """Back-propagate the loss of the effective batch; returns the loss (detached).

    ``no_sync`` (DDP's ``model.no_sync``) postpones the gradient all-reduce to the last
    micro-batch.
    """
    if len(micro_batches) == 1:
        images, texts = micro_batches[0]
        with autocast():
            image_f, text_f, scale, bias = _forward(model, images, texts)
        loss = contrastive_loss(loss_fn, image_f, text_f, scale, bias)
        _backward(loss, scaler)
        return loss.detach()

    with torch.no_grad(), autocast():
        cached = [_forward(model, images, texts)[:2] for images, texts in micro_batches]
    cached_images = [c[0] for c in cached]
    cached_texts = [c[1] for c in cached]
    last = len(micro_batches) - 1
    for j, (images, texts) in enumerate(micro_batches):
        sync = contextlib.nullcontext() if (j == last or no_sync is None) else no_sync()
        with sync:
            with autocast():
                image_f, text_f, scale, bias = _forward(model, images, texts)
            if j != last:
                scale = scale.detach()
                bias = bias.detach() if bias is not None else None
            all_images = torch.cat(cached_images[:j] + [image_f] + cached_images[j + 1:])
            all_texts = torch.cat(cached_texts[:j] + [text_f] + cached_texts[j + 1:])
            loss = contrastive_loss(loss_fn, all_images, all_texts, scale, bias)
            _backward(loss, scaler)
    return loss.detach()


def optimizer_step(model: torch.nn.Module, optimizer, scaler=None, grad_clip: float | None = None) -> float | None:
    """Clip (after unscaling), step, zero the gradients, clamp the temperature at ln(100)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = None
    if scaler is not None:
        if grad_clip:
            scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip).item()
        scaler.step(optimizer)
        scaler.update()
    else:
        if grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip).item()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(model)
    return norm


@torch.no_grad()
def clamp_logit_scale(model: torch.nn.Module, max_scale: float = 100.0) -> None:
    import math

    unwrap(model).logit_scale.clamp_(0, math.log(max_scale))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP model inside DDP and torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
