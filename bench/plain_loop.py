"""Measurement (b) of index_bench.py: the loop a user writes to embed a folder with open_clip.

    python bench/plain_loop.py FILE_LIST [--model ViT-B-32] [--batch-size 32] [--workers N]

FILE_LIST holds one picture path per line. The script is what it measures: PIL open →
convert → the model's preprocess in a torch DataLoader, encode, normalise, with torch's
defaults. index_bench.py runs it in a process of its own, as a user would, so it gets none
of the settings our indexer makes for itself (OMP_WAIT_POLICY, niceness). It prints one
JSON line: pictures, seconds and CPU seconds from the first batch to the last (model
loading excluded, as for `search index`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import open_clip
import torch
from PIL import Image


class Files(torch.utils.data.Dataset):
    def __init__(self, files: list[str], preprocess):
        self.files, self.preprocess = files, preprocess

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return self.preprocess(Image.open(self.files[i]).convert("RGB"))
        except Exception:  # a user's loop stops here (openclipart has a 623-megapixel PNG); the bench
            return self.preprocess(Image.new("RGB", (224, 224)))  # goes on with a blank picture


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file_list", type=Path)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    files = args.file_list.read_text().splitlines()
    omp_wait_policy = os.environ.get("OMP_WAIT_POLICY")  # as the user's environment has it (read by torch's import)
    if args.model not in open_clip.list_models():  # our own configs (clipsearch-tiny) register on import
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=None)
    model.eval()
    loader = torch.utils.data.DataLoader(Files(files, preprocess), batch_size=args.batch_size,
                                         num_workers=args.workers)
    done, started, cpu = 0, time.perf_counter(), cpu_seconds()
    with torch.no_grad():
        for batch in loader:
            features = model.encode_image(batch)
            features /= features.norm(dim=-1, keepdim=True)
            done += len(batch)
    print(json.dumps({"pictures": done, "seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu,
                      "omp_wait_policy": omp_wait_policy}))


if __name__ == "__main__":
    main()
