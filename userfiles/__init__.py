"""Files a user names, read within bounds: pictures' bytes, prompt templates, zero-shot labels.

The bottom of the dependency graph: imports nothing heavy and nothing of the project, so every
part may use it, the CLI's fast path (which must not import torch) included.
"""

from .read import MAX_TEXT_BYTES, MAX_TEXT_LINES, InputFileError, read_regular_file, read_text_entries
from .templates import MAX_TEMPLATES, load_templates

__all__ = ["MAX_TEXT_BYTES", "MAX_TEXT_LINES", "InputFileError", "read_regular_file", "read_text_entries",
           "MAX_TEMPLATES", "load_templates"]
