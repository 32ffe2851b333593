"""CPU per 12 MP camera JPEG: decoded the old way (the picture itself, at its smallest DCT scale that
covers the model) against through its embedded 1920×1440 MPF preview, side by side in one run (issue 16).

Pictures: photo-like 4000×3000 content (octaves of smooth noise, sensor-like grain, openclipart drawings
upscaled over it), JPEG quality 90. "Picture": the plain JPEG, which ``decode_picture`` decodes as before
(simplejpeg at 1/8 scale for a 224 model). "Preview": the same JPEG with a 1920×1440 copy of it (quality 90)
in MPF as a camera writes it, which ``decode_picture`` decodes instead. Every round decodes every file both
ways, one after the other, so both see the same load; the figure is the CPU time of one decode (process
time: this process only), median over rounds. Also printed: how far the two are apart as the model sees
them (both resized to its input, mean absolute difference in 0-255 levels).

    python bench/decode_bench.py                   # 6 pictures, 10 rounds, a 224-pixel model
    python bench/decode_bench.py --min-side 384    # a 384-pixel model
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from machine import cpu_summary
from PIL import Image

from encoders.decode import decode_picture

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from camera_helpers import camera_jpeg  # noqa: E402  (the tests' camera JPEGs: one way to write them)

SIZE, PREVIEW_SIZE = (4000, 3000), (1920, 1440)
CLIPART = "/usr/share/openclipart/png"


def photo_like(seed: int) -> Image.Image:
    """Smooth colour fields at several scales, grain like a sensor's, a few drawings with sharp edges:
    about the bytes of a 12 MP camera JPEG at quality 90 (what the entropy decoder, most of the cost, reads)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    total = np.full((height, width, 3), 128, np.float32)
    for cells, amplitude in ((4, 60), (16, 40), (64, 25), (256, 15), (1000, 10)):
        small = Image.fromarray(rng.integers(0, 256, (cells * height // width, cells, 3), dtype=np.uint8))
        total += (np.asarray(small.resize(SIZE, Image.BICUBIC), np.float32) - 128) * (amplitude / 128)
    total += rng.integers(-16, 17, total.shape, dtype=np.int8)
    photo = Image.fromarray(np.clip(total, 0, 255).astype(np.uint8))
    drawings = sorted(glob.glob(f"{CLIPART}/**/*.png", recursive=True))
    for _ in range(3 if drawings else 0):
        art = Image.open(drawings[rng.integers(len(drawings))]).convert("RGBA")
        scale = height * 0.6 / max(art.size)
        art = art.resize((int(art.width * scale), int(art.height * scale)), Image.BICUBIC)
        photo.paste(art, (int(rng.integers(width - art.width)), int(rng.integers(height - art.height))), art)
    return photo


def cpu_ms(data: bytes, min_side: int) -> tuple[float, Image.Image]:
    start = time.process_time()
    image = decode_picture(data, min_side).image
    return (time.process_time() - start) * 1000, image


def as_the_model_sees(image: Image.Image, min_side: int) -> np.ndarray:
    return np.asarray(image.resize((min_side * 4 // 3, min_side), Image.BICUBIC), np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--min-side", type=int, default=224, help="the model's input side")
    args = parser.parse_args()
    files = []
    for seed in range(args.pictures):
        photo = photo_like(seed)
        plain = io.BytesIO()
        photo.save(plain, "JPEG", quality=90)
        preview = photo.resize(PREVIEW_SIZE, Image.LANCZOS)
        files.append((plain.getvalue(), camera_jpeg(photo, preview, quality=90)))
        # The preview file decodes to what its preview alone decodes to: the preview, not the picture, was used.
        alone = io.BytesIO()
        preview.save(alone, "JPEG", quality=90)
        assert decode_picture(files[-1][1], args.min_side).image.size == \
            decode_picture(alone.getvalue(), args.min_side).image.size
    print(cpu_summary())
    print(f"{args.pictures} pictures {SIZE[0]}×{SIZE[1]}, {statistics.mean(len(p) for p, _ in files) / 1e6:.2f} MB "
          f"each (with the preview: {statistics.mean(len(c) for _, c in files) / 1e6:.2f} MB); model side "
          f"{args.min_side}; {args.rounds} rounds")
    picture_ms, preview_ms, apart = [], [], []
    for _ in range(args.rounds):
        for plain, camera in files:
            ms, from_picture = cpu_ms(plain, args.min_side)
            picture_ms.append(ms)
            ms, from_preview = cpu_ms(camera, args.min_side)
            preview_ms.append(ms)
            apart.append(float(np.abs(as_the_model_sees(from_picture, args.min_side)
                                      - as_the_model_sees(from_preview, args.min_side)).mean()))
    picture, preview = statistics.median(picture_ms), statistics.median(preview_ms)
    print(f"picture (old way): {picture:6.1f} ms CPU per decode, decoded {from_picture.size[0]}×{from_picture.size[1]}")
    print(f"preview:           {preview:6.1f} ms CPU per decode, decoded {from_preview.size[0]}×{from_preview.size[1]}")
    print(f"ratio: {picture / preview:.2f}x less CPU; as the model sees them, the two differ by "
          f"{statistics.mean(apart):.2f} levels of 255 on average; 1-min load after {os.getloadavg()[0]:.2f}")
    print(json.dumps({"min_side": args.min_side, "picture_ms": picture, "preview_ms": preview,
                      "ratio": picture / preview, "mean_abs_difference": statistics.mean(apart)}))


if __name__ == "__main__":
    main()
