"""Prompt templates: the CLIP paper's, for zero-shot labels and ensembled text queries (Radford et al., 2021,
§3.1.4), and a user's own from a file.

The paper's lists are plain ``"{}"`` strings, produced once from open_clip's ``OPENAI_IMAGENET_TEMPLATES`` and
``SIMPLE_IMAGENET_TEMPLATES`` (callables there) and checked equal to them by tests/test_encoders.py: importing
open_clip costs seconds (it imports torch), and a text query with ``--ensemble`` must not pay for it.
"""

from __future__ import annotations

import os
import string

from .files import InputFileError, read_text_entries

__all__ = ["PAPER_TEMPLATES", "SHORT_TEMPLATES", "MAX_TEMPLATES", "load_templates"]

MAX_TEMPLATES = 1_000  # the paper ensembles 80; every template is one more text to encode per query

# The 80 templates of the paper's ImageNet ensemble, in open_clip's order.
PAPER_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)

# The paper's shorter list of 7 (open_clip's SIMPLE_IMAGENET_TEMPLATES).
SHORT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.",
)


def load_templates(path: str | os.PathLike) -> tuple[str, ...]:
    """Templates from a text file: one per line, each with one ``{}`` for the label; ``#`` starts a comment.

    Read within bounds (a regular UTF-8 file of at most 1 MiB and 1,000 lines); every failure is an
    InputFileError (a ValueError) with a one-line message.
    """
    entries = read_text_entries(path, "templates file", max_lines=MAX_TEMPLATES)
    if not entries:
        raise InputFileError(f"templates file {path} holds no templates: write one per line, e.g. a photo of {{}}.")
    for number, template in entries:
        if not _one_placeholder(template):
            raise InputFileError(f"templates file {path}, line {number}: a template needs exactly one {{}} for the "
                                 f"label (write {{{{ and }}}} for literal braces): {template[:80]!r}")
    return tuple(template for _, template in entries)


def _one_placeholder(template: str) -> bool:
    """Whether ``template.format(label)`` works and puts the label in exactly once."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError:  # a lone { or }
        return False
    return fields == [""]
