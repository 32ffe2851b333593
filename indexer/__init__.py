"""Files → vectors: scan roots, decode safely, embed in batches, store rows and vectors, keep FAISS in step."""

# The decoder is shared with the trainer and lives in encoders; its names (and the module, as
# ``indexer.decode``) stay reachable from here.
from encoders import decode
from encoders.decode import MAX_PIXELS, DecodedPicture, DecodeError, decode_picture

from .library import Library, LibraryBusy, LibraryError, ModelMismatch, check_same_model
from .pipeline import IndexOptions, IndexSummary, MissingRoot, Progress, index_folders
from .scan import DEFAULT_EXCLUDES, ScannedFile, ScanOptions, scan
from .store import FAILED, OK, LibraryStore, Picture
from .tags import PictureTag, TagRun, ensure_tag_tables  # registers the tag tables before any create_all
from .vectors import VectorIndex

__all__ = [
    "decode", "MAX_PIXELS", "DecodeError", "DecodedPicture", "decode_picture", "Library", "LibraryBusy", "LibraryError",
    "ModelMismatch", "check_same_model", "IndexOptions", "IndexSummary", "MissingRoot", "Progress",
    "index_folders", "DEFAULT_EXCLUDES", "ScannedFile", "ScanOptions", "scan", "FAILED", "OK", "LibraryStore",
    "Picture", "VectorIndex", "PictureTag", "TagRun", "ensure_tag_tables",
]
