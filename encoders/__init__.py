"""Models: open_clip architectures and weights, encoding pictures and texts, model identity, prompt templates.

Names load on first use (PEP 562), as in ``indexer`` and ``search``: `import torch, open_clip` costs seconds,
and a text query answered by the exported ONNX text tower (``encoders.text``) must not pay for it. The
built-in architectures (clipsearch-tiny) register with open_clip when ``encoders.loader`` is imported: code
that names one to open_clip directly imports that module first.
"""

from .lazy import lazy_names

_MODULES = {
    ".encoder": ("ClipEncoder", "best_device"),
    ".files": ("InputFileError", "MAX_TEXT_BYTES", "MAX_TEXT_LINES", "atomic_write", "read_regular_file",
               "read_text_entries"),
    ".images": ("HEIC_SUPPORTED", "picture_extensions", "prepare_image"),
    ".loader": ("HUB_CONFIG", "hub_folder_architecture", "load_encoder", "load_tokenizer", "model_config"),
    ".spec": ("NO_WEIGHTS", "TINY_MODEL", "ModelError", "ModelFingerprint", "ModelSpec", "default_model"),
    ".templates": ("MAX_TEMPLATES", "PAPER_TEMPLATES", "SHORT_TEMPLATES", "load_templates"),
    ".text": ("TextEncoder",),
}
__getattr__, __all__ = lazy_names(__name__, _MODULES)
