"""AdamW with the paper's weight-decay exclusions, and warm-up then cosine learning rate."""

from __future__ import annotations

import math

import torch

NO_DECAY_NAMES = ("bias", "ln", "bn", "norm", "embedding", "logit_scale", "logit_bias", "class_embedding")


def decays(name: str, param: torch.Tensor) -> bool:
    """Decay matrices only: not gains, biases, embeddings or the temperature."""
    leaf = name.lower()
    return param.ndim >= 2 and not any(part in leaf for part in NO_DECAY_NAMES)


TRANSFORMER_ADAM = {"betas": (0.9, 0.98), "eps": 1e-6}
CONVNET_ADAM = {"betas": (0.9, 0.999), "eps": 1e-8}


def adam_settings(model: torch.nn.Module) -> dict:
    """The CLIP paper's Adam β and ε for the image tower's family: transformers 0.98 / 1e-6, ResNets 0.999 / 1e-8.

    As open_clip_train (which decides by "vit" in the model name), convolutional and hybrid
    towers (ConvNeXt, MobileCLIP's FastViT) take the ResNet settings.
    """
    from .fastpath import transformer_image_tower

    return dict(TRANSFORMER_ADAM if transformer_image_tower(model) else CONVNET_ADAM)


def make_optimizer(model: torch.nn.Module, lr: float, wd: float) -> torch.optim.AdamW:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if decays(n, p)], "weight_decay": wd},
    ]
    # One fused kernel over all tensors: on a CPU several times faster than the per-tensor loop, a good part
    # of a small-batch step (see BENCHMARKS.md, "Training").
    fused = {p.device.type for _, p in named} in ({"cpu"}, {"cuda"})
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None, **adam_settings(model))


def warmup_steps(warmup: float, total_steps: int) -> int:
    """``--warmup`` below 1 is a fraction of the run, 1 or more a number of steps."""
    return int(round(warmup * total_steps)) if warmup < 1 else int(warmup)


class WarmupCosine:
    """Linear warm-up to the base rate, then cosine decay to zero; a pure function of the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, warmup: int, total: int):
        self.optimizer, self.base_lr, self.warmup, self.total = optimizer, base_lr, warmup, max(total, 1)
        self.step_count = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * self.base_lr

    def set(self, step: int) -> float:
        self.step_count = step
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup": self.warmup, "total": self.total, "step": self.step_count}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr, self.warmup, self.total = state["base_lr"], state["warmup"], state["total"]
        self.step_count = state["step"]
