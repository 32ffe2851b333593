"""Start-up of `search index`: ours against rclip's, from process start, side by side in one run.

    python bench/startup_bench.py --rclip /path/to/venv-with-rclip/bin/python      # rclip 3.3.0 from PyPI
    python bench/startup_bench.py --model ViT-B-32 --runs 5

Measured, each as the best of --runs fresh processes (wall seconds from just before the process is started),
with --model and random weights (loading them is the same work):

  (a) ours, nothing to embed: a whole `search index FOLDER` over an up-to-date library (it loads no model);
  (b) ours, a few new pictures in an indexed folder: until their first batch reaches the image encoder (its
      encode_images is wrapped to report the moment and end the process, so every run finds them new), for a
      library filled on a PyTorch path (`--inference fp32-eager`: torch, open_clip and the model load) and one on
      the ONNX path (`--inference onnx`: the image tower exported beside the library), side by side;
  (c) rclip, until it needs its model: rclip loads no model until its index needs one, but first makes sure the
      ONNX files are downloaded (model_download.ensure_downloaded); that call is wrapped to report the moment and
      end the process. Nothing can be downloaded here, so rclip's session creation and first batch are NOT in (c).

(c) is therefore a lower bound of rclip's start-up; (a) and (b) are whole.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OURS_UNTIL_ENCODING = """
import os, sys, time
import encoders.onnx.image as onnx_image

def reached(*args, **kwargs):
    print(time.time(), flush=True)
    os._exit(0)

onnx_image.OnnxImageEncoder.encode_images = reached
if any("fp32-eager" in arg for arg in sys.argv):  # the PyTorch path: its encoder module imports torch
    import encoders.encoder as encoder
    encoder.ClipEncoder.encode_images = reached
from search.cli import main
sys.argv = ["search", *sys.argv[1:]]
main()
"""

RCLIP_UNTIL_MODEL = """
import os, sys, time
from rclip import model_download

def reached():
    print(time.time(), flush=True)
    os._exit(0)

model_download.ensure_downloaded = reached
from rclip.main import main
sys.argv = ["rclip", "a dog"]
main()
"""


def _until_reported(command: list[str], cwd: Path, env: dict) -> float:
    began = time.time()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1]) - began


def _whole(command: list[str], cwd: Path, env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(command, capture_output=True, cwd=cwd, env=env, check=True)
    return time.perf_counter() - began


def _pictures(folder: Path, count: int, start: int = 0) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(folder / f"p{i:03d}.jpg")


PATHS = ("fp32-eager", "onnx")  # a library filled on PyTorch's path, and one on the exported tower


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clipsearch-tiny")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rclip", help="a Python that has rclip installed")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    python = sys.executable
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        tmp = Path(tmp)
        env["XDG_CACHE_HOME"] = str(tmp / "cache")
        pictures = tmp / "pictures"
        _pictures(pictures, 4)
        model = ["--model", args.model, "--pretrained", "none"]
        for path in PATHS:
            subprocess.run([python, "-m", "search.cli", "index", str(pictures), "--library", str(tmp / path), *model,
                            "--inference", path], capture_output=True, cwd=ROOT, env=env, check=True)
        index = [python, "-m", "search.cli", "index", str(pictures), "--library", str(tmp / "onnx")]
        nothing = min(_whole(index, ROOT, env) for _ in range(args.runs))
        print(f"(a) ours, nothing to embed, whole run: {nothing:.2f} s")
        _pictures(pictures, 4, start=4)
        until = {}
        for path in PATHS:
            run = [python, "-c", OURS_UNTIL_ENCODING, "index", str(pictures), "--library", str(tmp / path),
                   f"--inference={path}"]
            until[path] = min(_until_reported(run, ROOT, env) for _ in range(args.runs))
            print(f"(b) ours, {args.model}, 4 new pictures, library on {path}: until they are encoded: "
                  f"{until[path]:.2f} s")
        print(f"    ONNX against PyTorch: {until[PATHS[0]] / until[PATHS[1]]:.2f}x sooner")
        if args.rclip:
            rclip_env = {**env, "RCLIP_DATADIR": str(tmp / "rclip")}
            rclip = min(_until_reported([args.rclip, "-c", RCLIP_UNTIL_MODEL], pictures, rclip_env)
                        for _ in range(args.runs))
            print(f"(c) rclip, until it needs its model (a lower bound): {rclip:.2f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
