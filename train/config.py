"""Everything a training run is made of, with defaults chosen for small corpora."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import TrainConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_EPOCHS = 10
LOSSES = ("clip", "siglip")
DEFAULT_LABEL_SMOOTHING = 0.1  # with the softmax (clip) loss; measured in BENCHMARKS.md (bench/train_recipe.py)


@dataclass
class TrainConfig:
    data: list[str]
    output: str
    val_data: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    model: str | None = None
    pretrained: str | None = None
    checkpoint: str | None = None
    epochs: int | None = None      # None: DEFAULT_EPOCHS, or no cap with a time budget
    batch_size: int = 128          # per process and micro-batch; effective = batch × accum × world
    seed: int = 0
    lr: float | None = None        # None: 1e-3 from scratch, 1e-5 when starting from weights
    wd: float = 0.1
    warmup: float = 0.1            # fraction of total optimizer steps (a number ≥ 1 means steps)
    precision: str | None = None   # None: CPU as measured (train/fastpath.py); bf16 on CUDA with it, else fp16
    accum_steps: int = 1
    grad_clip: float | None = 1.0
    grad_checkpointing: bool = False
    compile: bool = False
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    loss: str | None = None         # None: the model's own (train.model.model_loss): siglip for SigLIP models
    crop_scale: float = 0.6        # random crops of crop_scale..1 of the area (1: none); see BENCHMARKS.md
    label_smoothing: float | None = None  # of the softmax loss's targets (None: DEFAULT_LABEL_SMOOTHING; siglip 0)
    init_temperature: float | None = None  # from scratch: the softmax temperature to start at (None: CLIP's 0.07)
    save_every: int = 0            # optimizer steps between checkpoints (0: only at each epoch)
    resume: str | None = None      # "latest" or a checkpoint file
    workers: int | None = None     # None: chosen from the corpus (0 when it is decoded in memory)
    image_column: str = "filepath"
    caption_column: str = "caption"
    label_column: str | None = None
    templates: str | None = None
    log_every: int = 10
    max_steps: int | None = None   # stop after this many optimizer steps (tests, quick looks)
    progress: bool = True
    time_budget: float | None = None  # seconds from start to exported model; sizes the schedule
    resampled: bool = False        # tar shards drawn with replacement instead of split
    dist_timeout: float = 120.0    # minutes a process waits for the others (rank 0 validates alone)

    @property
    def from_weights(self) -> bool:
        return bool(self.checkpoint) or (self.pretrained not in (None, "none"))

    def validate(self) -> None:
        """Checks that need no files or models; data and model checks happen where they load."""
        problems = []
        if not self.data:
            problems.append("--data is required (a CSV/TSV, JSONL, folder or tar shard pattern)")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"--epochs must be at least 1 (got {self.epochs})")
        if self.time_budget is not None and not self.time_budget > 0:
            problems.append(f"--time-budget must be a positive number of seconds (got {self.time_budget})")
        if self.dist_timeout <= 0:
            problems.append(f"--dist-timeout must be positive (got {self.dist_timeout})")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.loss == "clip" and self.batch_size * self.accum_steps < 2:
            problems.append("a contrastive loss needs at least 2 pairs per effective batch")
        if self.accum_steps < 1:
            problems.append(f"--accum-steps must be at least 1 (got {self.accum_steps})")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"--val-fraction must be in [0, 1) (got {self.val_fraction})")
        if self.val_fraction and self.val_data:
            problems.append("give either --val-data or --val-fraction, not both")
        if self.precision is not None and self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.loss is not None and self.loss not in LOSSES:
            problems.append(f"--loss must be one of {', '.join(LOSSES)} (got {self.loss!r})")
        if not 0.0 < self.crop_scale <= 1.0:
            problems.append(f"--crop-scale must be in (0, 1] (got {self.crop_scale})")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.label_smoothing and self.loss == "siglip":
            problems.append("--label-smoothing applies to --loss clip only")
        if self.init_temperature is not None and not 0.0 < self.init_temperature <= 1.0:
            problems.append(f"--init-temperature must be in (0, 1] (got {self.init_temperature})")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"--lr must be positive (got {self.lr})")
        if self.wd < 0:
            problems.append(f"--wd must be ≥ 0 (got {self.wd})")
        if self.warmup < 0:
            problems.append(f"--warmup must be ≥ 0 (got {self.warmup})")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.save_every < 0:
            problems.append(f"--save-every must be ≥ 0 (got {self.save_every})")
        if self.checkpoint and self.pretrained not in (None,):
            problems.append("give either --pretrained or --checkpoint, not both")
        if self.templates and not Path(self.templates).is_file():
            problems.append(f"--templates file not found: {self.templates}")
        if self.workers is not None and self.workers < 0:
            problems.append(f"--workers must be ≥ 0 (got {self.workers})")
        if problems:
            raise TrainConfigError("; ".join(problems))
