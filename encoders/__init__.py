"""Models: open_clip architectures and weights, encoding pictures and texts, model identity.

Names load on first use (PEP 562), so reading a templates file or a picture's bytes
(``encoders.templates``, ``encoders.files``) does not import torch and open_clip (seconds):
the CLI's fast path needs them without.
"""

import importlib
import os

# torch's OpenMP threads spin-wait between operations by default. While the indexer's decode
# workers share the cores, that spinning takes their CPU: measured on 2 cores, ViT-B-32 needs
# ~100 ms of CPU per picture with passive waiting against ~140-150 ms with spinning. Set
# OMP_WAIT_POLICY yourself to override; it only counts if set before torch is first imported,
# hence here, before any module of this package imports it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_SOURCES = {
    "encoder": ("ClipEncoder", "best_device"),
    "images": ("HEIC_SUPPORTED", "picture_extensions", "prepare_image"),
    "loader": ("HUB_CONFIG", "hub_folder_architecture", "load_encoder", "model_config"),
    "spec": ("DEFAULT_MODEL", "DEFAULT_PRETRAINED", "NO_WEIGHTS", "TINY_MODEL", "ModelError", "ModelFingerprint",
             "ModelSpec"),
    "templates": ("PAPER_TEMPLATES", "SHORT_TEMPLATES", "fill", "load_templates"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    try:
        loaded = importlib.import_module(f".{module or name}", __name__)
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{module or name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(loaded, name) if module else loaded
