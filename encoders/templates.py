"""Prompt templates for zero-shot labels and ensembled text queries (Radford et al., 2021, §3.1.4)."""

from __future__ import annotations

from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from userfiles import load_templates  # a user's own templates file, read within bounds

__all__ = ["PAPER_TEMPLATES", "SHORT_TEMPLATES", "fill", "load_templates"]

# open_clip keeps the paper's templates as callables; we keep them as "{}" strings so a
# user can write their own in a file, one per line.
PAPER_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)
SHORT_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)


def fill(templates: tuple[str, ...] | list[str], label: str) -> list[str]:
    return [t.format(label) for t in templates]
