"""Retrieval recall@k (text→image, image→text) and zero-shot accuracy with prompt ensembling.

Similarities are computed a block of queries at a time (block × N), never as a full N×N
matrix. Text→image is reported two ways (``QUERIES`` says which is which in the results):
``text_to_image`` has one query per unique caption, every picture carrying it a hit (a search
engine's view: "red circle" is one search); ``text_to_image_per_caption`` has one query per
caption, its own picture the only hit (what papers and open_clip print). Image→text: one query
per picture, any of its captions a hit.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split, eval_loader
from .errors import TrainConfigError

KS = (1, 5, 10)
BLOCK = 1024
QUERIES = {
    "text_to_image": "one query per unique caption; every picture carrying it is a hit",
    "text_to_image_per_caption": "one query per caption; its own picture is the only hit (as papers, open_clip)",
    "image_to_text": "one query per picture; any of its captions is a hit",
}


@torch.no_grad()
def encode_images(model, split: Split, device: torch.device, batch_size: int = 256,
                  autocast=contextlib.nullcontext, workers: int = 0) -> tuple[torch.Tensor, list[int], Counter]:
    """(readable pictures × dim, their indices in ``split``, reasons of the others), L2-normalised float32."""
    features, readable, failed = [], [], Counter()
    for pixels, indices, reasons in eval_loader(split, batch_size, workers):
        failed.update(reasons)
        if pixels is None:
            continue
        with autocast():
            features.append(model.encode_image(pixels.to(device), normalize=True).float().cpu())
        readable.extend(indices)
    if not features:
        raise TrainConfigError(f"none of the {len(split)} evaluation pictures could be read")
    return F.normalize(torch.cat(features), dim=-1), readable, failed


@torch.no_grad()
def encode_texts(model, tokens: torch.Tensor, device: torch.device, batch_size: int = 256,
                 autocast=contextlib.nullcontext) -> torch.Tensor:
    texts = []
    for start in range(0, len(tokens), batch_size):
        with autocast():
            texts.append(model.encode_text(tokens[start:start + batch_size].long().to(device), normalize=True)
                         .float().cpu())
    return F.normalize(torch.cat(texts), dim=-1)


def _recall(queries: torch.Tensor, targets: torch.Tensor, relevant: Sequence[set[int]],
            ks: Sequence[int], block: int) -> dict[str, float]:
    k_max = min(max(ks), len(targets))
    hits = {k: 0 for k in ks}
    for start in range(0, len(queries), block):
        top = (queries[start:start + block] @ targets.T).topk(k_max, dim=1).indices.tolist()
        for row, ranked in enumerate(top):
            rel = relevant[start + row]
            first = next((rank for rank, t in enumerate(ranked) if t in rel), None)
            if first is not None:
                for k in ks:
                    hits[k] += first < k
    return {f"recall@{k}": hits[k] / max(1, len(queries)) for k in ks}


def retrieval_metrics(image_features: torch.Tensor, text_features: torch.Tensor, captions: Sequence[str],
                      caption_index: Sequence[Sequence[int]], ks: Sequence[int] = KS,
                      block: int = BLOCK) -> dict[str, dict[str, float]]:
    """Recall@k both ways (the module's docstring says how queries and hits are counted)."""
    unique: dict[str, int] = {}
    first_row: list[int] = []
    for row, caption in enumerate(captions):
        if caption not in unique:
            unique[caption] = len(unique)
            first_row.append(row)
    text_ids = [unique[c] for c in captions]
    texts_of_image = [{text_ids[r] for r in rows} for rows in caption_index]
    images_of_text: list[set[int]] = [set() for _ in unique]
    for image, ids in enumerate(texts_of_image):
        for t in ids:
            images_of_text[t].add(image)
    unique_text = text_features[first_row]
    own_picture = [set() for _ in captions]
    for image, rows in enumerate(caption_index):
        for row in rows:
            own_picture[row].add(image)
    return {
        "text_to_image": _recall(unique_text, image_features, images_of_text, ks, block),
        "text_to_image_per_caption": _recall(text_features, image_features, own_picture, ks, block),
        "image_to_text": _recall(image_features, unique_text, texts_of_image, ks, block),
    }


@torch.no_grad()
def class_embeddings(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                     device: torch.device, autocast=contextlib.nullcontext) -> torch.Tensor:
    """One unit vector per class: the mean of its normalised template embeddings, renormalised."""
    out = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        with autocast():
            emb = model.encode_text(tokens, normalize=True).float()
        out.append(F.normalize(emb.mean(dim=0), dim=-1).cpu())
    return torch.stack(out)


def zero_shot_metrics(image_features: torch.Tensor, labels: Sequence[str | None], classes: torch.Tensor,
                      classnames: Sequence[str], block: int = BLOCK) -> dict[str, float | int]:
    index = {c: i for i, c in enumerate(classnames)}
    keep = [i for i, label in enumerate(labels) if label is not None and label in index]
    target = torch.tensor([index[labels[i]] for i in keep])
    feats = image_features[keep]
    k5 = min(5, len(classnames))
    top1 = top5 = 0
    for start in range(0, len(feats), block):
        top = (feats[start:start + block] @ classes.T).topk(k5, dim=1).indices
        t = target[start:start + block, None]
        top1 += (top[:, :1] == t).sum().item()
        top5 += (top == t).any(dim=1).sum().item()
    n = max(1, len(keep))
    return {"top1": top1 / n, "top5": top5 / n, "n_classes": len(classnames)}


def default_templates() -> tuple[str, ...]:
    from encoders import SHORT_TEMPLATES

    return ("{}",) + tuple(SHORT_TEMPLATES)


def evaluate(model, split: Split, tokenizer, device: torch.device, batch_size: int = 256,
             templates: Sequence[str] | None = None, autocast=contextlib.nullcontext,
             workers: int = 0) -> dict:
    """All metrics for one split: retrieval always, zero-shot when the pictures carry labels.

    Pictures that cannot be read (found only now when they are decoded lazily) are left out,
    with their captions, and counted under ``unreadable``.
    """
    was_training = model.training
    model.eval()
    try:
        image_features, readable, failed = encode_images(model, split, device, batch_size, autocast, workers)
        if len(readable) < len(split):
            split = split.subset(readable)
        text_features = encode_texts(model, split.tokens, device, batch_size, autocast)
        result = {"n_images": len(split), "n_captions": len(split.captions),
                  "n_unique_captions": len(set(split.captions)),
                  **retrieval_metrics(image_features, text_features, split.captions, split.caption_index),
                  "queries": dict(QUERIES)}
        if failed:
            result["unreadable"] = dict(failed)
        labels = split.labels
        if any(label is not None for label in labels):
            classnames = sorted({label for label in labels if label is not None})
            classes = class_embeddings(model, tokenizer, classnames, templates or default_templates(), device,
                                       autocast)
            result["zero_shot"] = zero_shot_metrics(image_features, labels, classes, classnames)
    finally:
        model.train(was_training)
    return result


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float, np.floating)):
            out[f"{prefix}{key}"] = float(value)
    return out


def evaluate_checkpoint(checkpoint: str, data: list[str], label_column: str | None = None,
                        templates_file: str | None = None, batch_size: int = 256, image_column: str = "filepath",
                        caption_column: str = "caption", model: str | None = None) -> dict:
    """``search eval``: a trained model folder (or weights file with ``model``) on a captioned corpus."""
    from encoders import ModelError, ModelSpec, load_encoder, load_templates

    from .corpus import read_corpus
    from .data import build_split
    from .images import ModelPictures

    if batch_size < 1:
        raise TrainConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    templates = None
    if templates_file:
        try:
            templates = load_templates(templates_file)
        except (OSError, ValueError) as e:
            raise TrainConfigError(f"--templates: {e}") from e
    corpus = read_corpus(data, image_column, caption_column, label_column)
    try:
        encoder = load_encoder(ModelSpec.from_options(model, None, checkpoint))
    except ModelError as e:
        raise TrainConfigError(str(e)) from e
    pictures = ModelPictures(encoder.preprocess, encoder.image_size)
    split = build_split(corpus.records, encoder.tokenizer, pictures, corpus.skipped)
    if not len(split):
        raise TrainConfigError(f"no readable pictures in {', '.join(data)}")
    result = evaluate(encoder.model, split, encoder.tokenizer, encoder.device, batch_size, templates)
    if label_column is None:
        result.pop("zero_shot", None)
    for reason, n in result.pop("unreadable", {}).items():
        corpus.skipped[f"unreadable ({reason})"] += n
    result["skipped"] = dict(corpus.skipped)
    return result
