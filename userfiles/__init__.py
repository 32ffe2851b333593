"""Files a user names, read within bounds (pictures' bytes, prompt templates, zero-shot labels), and the files
this program writes for itself, written atomically (FAISS indexes, previews, ONNX towers, checkpoints).

The bottom of the dependency graph: imports nothing heavy and nothing of the project, so every
part may use it, the CLI's fast path (which must not import torch) included.
"""

from .atomic import atomic_write
from .read import MAX_TEXT_BYTES, MAX_TEXT_LINES, InputFileError, read_regular_file, read_text_entries
from .templates import MAX_TEMPLATES, load_templates

__all__ = ["atomic_write", "MAX_TEXT_BYTES", "MAX_TEXT_LINES", "InputFileError", "read_regular_file",
           "read_text_entries", "MAX_TEMPLATES", "load_templates"]
