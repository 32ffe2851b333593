"""The one dynamic part of the package metadata: which FAISS build to depend on.

faiss-cpu, faiss-gpu-cu12 and faiss-gpu-cuvs all install the same ``faiss`` module, so
a GPU extra on top of a CPU dependency would install both. The choice is made once, at
install time: ``CLIPSEARCH_FAISS=gpu pip install .`` (CUDA 12) or ``=gpu-cuvs`` (CUDA 13);
the default is the CPU build, which works everywhere.
"""

import os

from setuptools import setup

FAISS_BUILDS = {"cpu": "faiss-cpu>=1.9", "gpu": "faiss-gpu-cu12>=1.9", "gpu-cuvs": "faiss-gpu-cuvs>=1.12"}
choice = os.environ.get("CLIPSEARCH_FAISS", "cpu")
if choice not in FAISS_BUILDS:
    raise SystemExit(f"CLIPSEARCH_FAISS must be one of {', '.join(FAISS_BUILDS)}, not {choice!r}")

setup(install_requires=[
    "torch==2.14.1",
    "torchvision==0.29.1",
    "open_clip_torch>=3.3,<4",
    FAISS_BUILDS[choice],
    "sqlalchemy>=2.0",
    "alembic>=1.13",  # the library's schema migrations (indexer/migrations), shipped in the package
    "pillow>=10",
    "xxhash>=3.0",  # content hashes: 0.5 ms for a 4 MB photo against 7 ms for blake2b (indexer/hashes.py)
    "simplejpeg>=1.7",  # JPEG decoding at reduced scale without Pillow's buffering (indexer/decode.py)
    "numpy>=1.24",
    "safetensors>=0.4",
    "typer>=0.12",
    "rich>=13",
    # Queries start without torch: the text tower runs in ONNX Runtime (search/fastpath.py).
    "onnxruntime>=1.17",
    "onnx>=1.15",
    # open_clip's own dependencies that our code imports directly (tokenizer, hub downloads, progress).
    "huggingface_hub>=0.20",
    "regex",
    "ftfy",
    "tqdm",
    # `search app`: the search page.
    "streamlit>=1.40",
    # `search train`: tar shards, the TensorBoard log and the PNG of the curves.
    "webdataset>=0.2",
    "braceexpand>=0.1.7",
    "tensorboard>=2.15",
    "matplotlib>=3.8",
])
