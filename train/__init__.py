"""corpus → model: datasets, CLIP loss, training loop (single process or torchrun DDP),
checkpoints and evaluation (retrieval recall@k, zero-shot accuracy).

Kept import-light: ``train.cli`` must load without torch so ``search --help`` stays fast.
"""

from .errors import TrainConfigError

__all__ = ["TrainConfigError"]
