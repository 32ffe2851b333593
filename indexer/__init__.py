"""Files → vectors: scan roots, decode safely, embed in batches, store rows and vectors, keep FAISS in step.

Names load on first use: `search query` reads a library through the light modules here (errors,
store, indexproof) without paying for torch, which the pipeline imports.
"""

from importlib import import_module

_MODULES = {
    # The decoder is shared with the trainer and lives in encoders; its names (and the module, as
    # ``indexer.decode``) stay reachable from here.
    "encoders.decode": ("MAX_PIXELS", "DecodeError", "DecodedPicture", "decode_picture"),
    ".errors": ("LibraryError",),
    ".library": ("Library", "ModelMismatch", "check_same_model"),
    ".pipeline": ("IndexOptions", "IndexSummary", "MissingRoot", "Progress", "index_folders"),
    ".scan": ("DEFAULT_EXCLUDES", "ScannedFile", "ScanOptions", "scan"),
    ".store": ("FAILED", "OK", "LibraryBusy", "LibraryStore", "PictureRow"),
    ".vectors": ("VectorIndex",),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}
__all__ = ["decode", *_HOME]


def __getattr__(name: str):
    if name == "decode":
        value = import_module("encoders.decode")
    elif name in _HOME:
        value = getattr(import_module(_HOME[name], __name__), name)
    else:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    globals()[name] = value
    return value
