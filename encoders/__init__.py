"""Models: open_clip architectures and weights, encoding pictures and texts, model identity."""

from .encoder import ClipEncoder, best_device
from .images import HEIC_SUPPORTED, picture_extensions, prepare_image
from .loader import HUB_CONFIG, hub_folder_architecture, load_encoder, model_config
from .spec import DEFAULT_MODEL, DEFAULT_PRETRAINED, NO_WEIGHTS, TINY_MODEL, ModelError, ModelFingerprint, ModelSpec
from .templates import PAPER_TEMPLATES, SHORT_TEMPLATES, fill, load_templates

__all__ = [
    "ClipEncoder", "best_device", "HEIC_SUPPORTED", "picture_extensions", "prepare_image", "load_encoder",
    "model_config", "HUB_CONFIG",
    "hub_folder_architecture",
    "DEFAULT_MODEL", "DEFAULT_PRETRAINED", "NO_WEIGHTS", "TINY_MODEL", "ModelError", "ModelFingerprint",
    "ModelSpec", "PAPER_TEMPLATES", "SHORT_TEMPLATES", "fill", "load_templates",
]
