"""Files → vectors: scan roots, decode safely, embed in batches, store rows and vectors, keep FAISS in step.

Names load on first use: `search query` reads a library through the light modules here (errors,
store, indexproof) without paying for torch, which the pipeline imports.
"""

from encoders.lazy import lazy_names

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
__getattr__, __all__ = lazy_names(__name__, _MODULES, submodules={"decode": "encoders.decode"})
