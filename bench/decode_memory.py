"""Peak memory of decoding one big picture: our decoder against the plain way, side by side, per format.

The plain way: ``Image.open`` + ``load``, EXIF transpose, conversion to RGB on white, all at full size
(open_clip's pipeline with our preparation; the decoder before issue 14 did the same for every format
but JPEG, which it already decoded at reduced scale). Ours decodes JPEG and JPEG 2000 at reduced
scale, converts and shrinks a strip at a time, and refuses what would need more than its bound.
Each decode runs in a fresh process; the figure is the growth of its peak resident memory (VmHWM: the
process's own, unlike ru_maxrss, which a child inherits from the parent that forked it) over what it held
before decoding (the file's bytes included), so the machine's load does not change it.

    python bench/decode_memory.py                # 48-megapixel pictures (8000×6000)
    python bench/decode_memory.py --side 4000    # 4000×3000
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MEASURE = """
import io, json, os, sys
sys.path.insert(0, sys.argv[3])
from PIL import Image, ImageOps
from encoders.decode import DecodeError, decode_picture
from encoders.images import on_white
data = open(sys.argv[1], "rb").read()
statm = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = statm()
outcome = "decoded"
if sys.argv[2] == "plain":
    image = on_white(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
else:
    try:
        image = decode_picture(data, 224).image
    except DecodeError as e:
        outcome = str(e)
peak = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
print(json.dumps({"mb": (peak - before) / 1e6, "outcome": outcome}))
"""


def make_pictures(folder: Path, width: int, height: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (height // 100, width // 100, 3), dtype=np.uint8))
    photo = photo.resize((width, height))
    alpha = photo.copy()
    alpha.putalpha(Image.linear_gradient("L").resize(photo.size))
    pictures = {
        "PNG RGB": (photo, "png", {"compress_level": 1}),
        "PNG RGBA": (alpha, "png", {"compress_level": 1}),
        "PNG palette": (photo.convert("P"), "png", {"compress_level": 1}),
        "TIFF RGB": (photo, "tif", {"compression": "tiff_lzw"}),
        "JPEG baseline": (photo, "jpg", {"quality": 85}),
        "JPEG progressive": (photo, "jpg", {"quality": 85, "progressive": True}),
        "JPEG 2000": (photo, "jp2", {}),
        "WebP": (photo, "webp", {"quality": 50, "method": 0}),
    }
    paths = {}
    for name, (image, ext, options) in pictures.items():
        out = io.BytesIO()
        image.save(out, format=Image.registered_extensions()[f".{ext}"], **options)
        paths[name] = folder / f"{name.replace(' ', '_')}.{ext}"
        paths[name].write_bytes(out.getvalue())
    return paths


def measure(path: Path, way: str) -> dict:
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path), way, str(REPO)], capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8000, help="width of the pictures (height: 3/4 of it)")
    args = parser.parse_args()
    width, height = args.side, args.side * 3 // 4
    print(f"{width}×{height} pictures ({width * height / 1e6:.0f} MP); peak memory of one decode, MB")
    print(f"{'format':<18} {'plain':>8} {'ours':>8} {'ratio':>7}  ours")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, path in make_pictures(Path(folder), width, height).items():
            plain, ours = measure(path, "plain"), measure(path, "ours")
            ratio = plain["mb"] / max(ours["mb"], 1.0)
            print(f"{name:<18} {plain['mb']:>8.0f} {ours['mb']:>8.0f} {ratio:>6.1f}x  {ours['outcome']}")
            rows.append({"format": name, "plain_mb": plain["mb"], "ours_mb": ours["mb"], "ours": ours["outcome"]})
    print(json.dumps({"width": width, "height": height, "rows": rows}))


if __name__ == "__main__":
    main()
