"""The one dynamic part of the package metadata: which FAISS build to depend on.

faiss-cpu, faiss-gpu-cu12 and faiss-gpu-cuvs all install the same ``faiss`` module, so
a GPU extra on top of a CPU dependency would install both. The choice is made once, at
install time: ``CLIPSEARCH_FAISS=gpu pip install .`` (CUDA 12) or ``=gpu-cuvs`` (CUDA 13);
the default is the CPU build, which works everywhere.
"""

import os

from setuptools import setup

# 1.11: a flat index memory-mapped read-only (IO_FLAG_MMAP_IFC), as one-shot queries open it.
FAISS_BUILDS = {"cpu": "faiss-cpu>=1.11", "gpu": "faiss-gpu-cu12>=1.11", "gpu-cuvs": "faiss-gpu-cuvs>=1.12"}
choice = os.environ.get("CLIPSEARCH_FAISS", "cpu")
if choice not in FAISS_BUILDS:
    raise SystemExit(f"CLIPSEARCH_FAISS must be one of {', '.join(FAISS_BUILDS)}, not {choice!r}")

# Each lower bound is the lowest release the whole test suite passes with, every direct dependency at its
# floor together (Python 3.11 wheels only): `bash .ci/floors.sh` checks them again. A comment says why
# where a floor is higher than what the code itself calls for.
setup(install_requires=[
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch>=3.3,<4",
    FAISS_BUILDS[choice],
    "sqlalchemy>=2.0",
    "alembic>=1.13",  # the library's schema migrations (indexer/store/migrations), shipped in the package
    # A library's rows in PostgreSQL (--database postgresql://...) from the base install: psycopg 3, whose
    # binary wheel brings its own libpq.
    "psycopg[binary]>=3.1",
    "pillow>=10",
    "xxhash>=3.2",  # content hashes: 0.5 ms for a 4 MB photo against 7 ms for blake2b (indexer/hashes.py)
    "simplejpeg>=1.7",  # JPEG decoding at reduced scale without Pillow's buffering (encoders/decode.py)
    "numpy>=1.25",  # faiss-cpu 1.11 needs it
    "safetensors>=0.8",  # transformers 5.20 needs it
    # Older typer calls click APIs that current click deprecates (warnings on every command's stderr);
    # typer 0.15 and older fail outright with click 8.2 and newer, which pip installs beside them.
    "typer>=0.26",
    "rich>=13.8",  # typer 0.26 needs it
    # Text queries start without torch: the text tower runs in ONNX Runtime (encoders/text/onnx_runtime.py).
    "onnxruntime>=1.20",  # the exported tower's end-token pooling is an ArgMax over int64: no kernel before 1.20
    "onnx>=1.15",
    # open_clip's own dependencies that our code imports directly (tokenizer, hub downloads, progress).
    "huggingface_hub>=1.31",  # transformers 5.20 needs it
    # SigLIP's and SigLIP2's tokenizers are Hugging Face tokenizers: open_clip loads them through transformers.
    "transformers>=5.20",  # older 5.x fail to load a SigLIP tokenizer from the hub cache offline (tested)
    # Their text queries tokenize with transformers' Rust core alone (encoders/text/tokenizer.py, HubTokenizer).
    "tokenizers>=0.23.1",  # transformers 5.20 needs it
    "regex>=2025.10.22",  # transformers 5.20 needs it
    "ftfy>=6.1",
    "tqdm>=4.60",  # transformers' tokenizers import tqdm.contrib.logging
    # `search app`: the search page. The page needs 1.53 (st.file_uploader's max_upload_size) and its
    # tests 1.59 (AppTest.file_uploader, AppTest.image); 1.59 to 1.61.0 fail to serve the thumbnails
    # with the starlette that pip installs beside them (1.61.1 caps starlette, 1.62 fixes it).
    "streamlit>=1.61.1",
    # `search train`: tar shards (streamed through webdataset's tar reader), the TensorBoard log, the curves.
    "webdataset>=0.2.86",
    "braceexpand>=0.1.7",
    "tensorboard>=2.16.2",  # older releases cap protobuf below what streamlit needs; 2.16.0 requires tf-keras-nightly
    "matplotlib>=3.10.7",  # older releases call pyparsing APIs that pyparsing 3.3 deprecates (warnings on stderr)
])
