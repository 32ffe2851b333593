"""Prompt templates for zero-shot labels and ensembled text queries (Radford et al., 2021, §3.1.4)."""

from __future__ import annotations

from pathlib import Path

from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

# open_clip keeps the paper's templates as callables; we keep them as "{}" strings so a
# user can write their own in a file, one per line.
PAPER_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
SHORT_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)


def load_templates(path: str | Path) -> tuple[str, ...]:
    """Templates from a text file: one per line, each containing ``{}``; ``#`` starts a comment."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    templates = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise ValueError(f"{path}: every template needs a '{{}}' placeholder (bad: {bad[:3]})" if bad
                         else f"{path}: no templates found")
    return templates


def fill(templates: tuple[str, ...] | list[str], label: str) -> list[str]:
    return [t.format(label) for t in templates]
