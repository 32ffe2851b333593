"""``search train`` and ``search eval``: registered on the main typer app by ``register(app)``.

Only typer and the standard library are imported here; torch and open_clip load inside the
command bodies so ``search --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import time

import typer

EXIT_CONFIG = 2
STARTED = time.monotonic()  # near the process start: --time-budget counts the imports that follow too
TIME_BUDGET_HELP = ("Train the best model this wall-clock time allows, from start to exported model: the first steps "
                    "are timed, then the warm-up + cosine schedule is sized to the steps that fit, after the time "
                    "validation, checkpoints and the export will take; a guard stops early if steps get slower.")
DIST_TIMEOUT_HELP = ("How long processes wait for each other under torchrun (rank 0 validates and writes checkpoints "
                     "while the others wait).")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_CONFIG)


def train_command(
    data: list[str] = typer.Option(..., "--data", help="Corpus: CSV/TSV, JSONL, folder with .txt captions, or "  # noqa: B008
                                   "tar shards like shards/{000..099}.tar. Repeat for several."),
    output: str = typer.Option(..., "--output", help="Run folder: checkpoints, metrics, curves, model/."),
    val_data: list[str] | None = typer.Option(None, "--val-data", help="Validation corpus (any format)."),  # noqa: B008
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Hold out this fraction of the pictures."),
    model: str | None = typer.Option(None, "--model", help="open_clip architecture (default: "
                                    "ViT-B-32-SigLIP2-256 with webli on a CPU with native bf16 or a GPU, else "
                                    "ViT-B-32 with laion2b_s34b_b79k)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="open_clip tag, hf-hub:ORG/REPO or none."),
    checkpoint: str | None = typer.Option(None, "--checkpoint", help="Start from a model folder or weights file."),
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the corpus (default 10; with "
                                      "--time-budget, an upper limit)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Per process and micro-batch."),
    seed: int = typer.Option(0, "--seed"),
    lr: float | None = typer.Option(None, "--lr", help="Default 1e-3 from scratch, 1e-5 from weights."),
    wd: float = typer.Option(0.1, "--wd"),
    warmup: float = typer.Option(0.1, "--warmup", help="Fraction of all steps (< 1) or a number of steps."),
    precision: str | None = typer.Option(None, "--precision", help="fp32|bf16|fp16 (default on a CPU: "
                                            "bf16 where it is native and measured faster, else fp32; on a GPU bf16 "
                                            "or fp16)."),
    accum_steps: int = typer.Option(1, "--accum-steps", help="Micro-batches per optimizer step."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Max gradient norm (0: off)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing"),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    lock_image: bool = typer.Option(False, "--lock-image"),
    lock_image_unlocked_groups: int = typer.Option(0, "--lock-image-unlocked-groups"),
    lock_text: bool = typer.Option(False, "--lock-text"),
    lock_text_unlocked_layers: int = typer.Option(0, "--lock-text-unlocked-layers"),
    loss: str | None = typer.Option(None, "--loss", help="clip|siglip (default: the model's own, siglip for a "
                                    "model with a logit bias: SigLIP, SigLIP 2; clip otherwise)."),
    crop_scale: float = typer.Option(0.6, "--crop-scale", help="Augmentation: random crops of this much to all of "
                                     "a picture's area (1: none, each picture as the indexer prepares it)."),
    label_smoothing: float | None = typer.Option(None, "--label-smoothing", help="Of the softmax loss's targets "
                                                 "(default 0.1 with --loss clip; 0: none)."),
    init_temperature: float | None = typer.Option(None, "--init-temperature", help="From scratch: the starting "
                                                  "softmax temperature (default CLIP's 0.07)."),
    save_every: int = typer.Option(0, "--save-every", help="Checkpoint every N steps (and at each epoch)."),
    resume: str | None = typer.Option(None, "--resume", help="latest or a checkpoint file."),
    workers: int | None = typer.Option(None, "--workers", help="Data loader processes (default: automatic)."),
    image_column: str = typer.Option("filepath", "--image-column"),
    caption_column: str = typer.Option("caption", "--caption-column"),
    label_column: str | None = typer.Option(None, "--label-column", help="Zero-shot labels for validation."),
    templates: str | None = typer.Option(None, "--templates", help="Prompt templates file, one per line."),
    time_budget: float | None = typer.Option(None, "--time-budget", metavar="SECONDS", help=TIME_BUDGET_HELP),
    resampled: bool = typer.Option(False, "--resampled", help="Tar shards: each process and loader worker draws "
                                   "shards with replacement instead of splitting them (long multi-epoch runs)."),
    dist_timeout: float = typer.Option(120.0, "--dist-timeout", metavar="MINUTES", help=DIST_TIMEOUT_HELP),
    max_steps: int | None = typer.Option(None, "--max-steps", hidden=True),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train (or fine-tune) a CLIP model on captioned pictures; the result lands in OUTPUT/model/."""
    options = dict(locals())  # every option is the TrainConfig field of the same name
    from .errors import TrainConfigError

    try:
        from .config import TrainConfig
        from .loop import train

        cfg = TrainConfig(**{**options, "data": list(data), "val_data": list(val_data or []),
                             "grad_clip": grad_clip or None, "progress": progress and sys.stderr.isatty()})
        train(cfg, started=STARTED)
    except TrainConfigError as e:
        _fail(str(e))


def eval_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Model folder written by `search train`."),
    data: list[str] = typer.Option(..., "--data", help="Captioned corpus (any training format)."),  # noqa: B008
    model: str | None = typer.Option(None, "--model", help="Architecture, when --checkpoint is a weights file."),
    label_column: str | None = typer.Option(None, "--label-column", help="Also report zero-shot accuracy."),
    templates: str | None = typer.Option(None, "--templates", help="Prompt templates file, one per line."),
    batch_size: int = typer.Option(256, "--batch-size"),
    image_column: str = typer.Option("filepath", "--image-column"),
    caption_column: str = typer.Option("caption", "--caption-column"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Retrieval recall@1/5/10 (text→image, image→text) and zero-shot accuracy of a model."""
    from .errors import TrainConfigError

    try:
        from .eval import evaluate_checkpoint

        result = evaluate_checkpoint(checkpoint, list(data), label_column, templates, batch_size, image_column,
                                     caption_column, model)
    except TrainConfigError as e:
        _fail(str(e))
    skipped = result.pop("skipped", {})
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(f"{result['n_images']} pictures, {result['n_captions']} captions "
               f"({result['n_unique_captions']} unique)"
               + (f" (skipped: {', '.join(f'{n} {r}' for r, n in skipped.items())})" if skipped else ""))
    for key, label in (("text_to_image", "text→image, per unique caption"),
                       ("text_to_image_per_caption", "text→image, per caption"),
                       ("image_to_text", "image→text, per picture")):
        r = result[key]
        typer.echo(f"{label:>31}: R@1 {r['recall@1']:.4f}  R@5 {r['recall@5']:.4f}  R@10 {r['recall@10']:.4f}")
    if "zero_shot" in result:
        z = result["zero_shot"]
        typer.echo(f"{'zero-shot':>31}: top1 {z['top1']:.4f}  top5 {z['top5']:.4f}  ({z['n_classes']} classes)")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``eval`` to the main CLI."""
    app.command("train")(train_command)
    app.command("eval")(eval_command)
