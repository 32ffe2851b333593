"""Prompt templates written by a user, one a line: "a photo of a {}." (Radford et al., 2021, §3.1.4)."""

from __future__ import annotations

import os
import string

from .read import InputFileError, read_text_entries

MAX_TEMPLATES = 1_000  # the paper ensembles 80; every template is one more text to encode per query


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
