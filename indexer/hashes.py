"""Content hashes: how the indexer recognises moved, touched and duplicate files by their bytes."""

from __future__ import annotations

import hashlib

import xxhash

# xxh3-128 hashes a photo an order of magnitude faster than blake2b, in the decode workers that share the
# cores with the encoder (see BENCHMARKS.md, "Indexing", runs 9–12); an accidental collision is out of reach
# at 128 bits, and a deliberate one could only give a file the vector of another picture of the same library.
# Libraries made before it keep blake2b-160 (the library records which: `content_hash_kind`), so their moves
# and duplicates are still recognised.
CONTENT_HASHES = {
    "xxh3-128": xxhash.xxh3_128_hexdigest,
    "blake2b-160": lambda data: hashlib.blake2b(data, digest_size=20).hexdigest(),
}
CONTENT_HASH = "xxh3-128"


def content_hash(data: bytes, kind: str = CONTENT_HASH) -> str:
    return CONTENT_HASHES[kind](data)
