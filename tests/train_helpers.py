"""Small corpora drawn by the tests themselves (shapes × colours), in every corpus format."""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle", "cross")


def draw(shape: str, colour: str, rng: random.Random, size: int = 64) -> Image.Image:
    """One shape of one colour, random size and position, on a light random background."""
    grey = rng.randint(215, 255)
    image = Image.new("RGB", (size, size), (grey, grey, grey))
    pen = ImageDraw.Draw(image)
    side = rng.randint(size // 2, size * 7 // 8)
    x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
    box = (x0, y0, x0 + side, y0 + side)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    elif shape == "triangle":
        pen.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=fill)
    else:
        w = max(3, side // 4)
        pen.rectangle((x0 + (side - w) // 2, y0, x0 + (side + w) // 2, y0 + side), fill=fill)
        pen.rectangle((x0, y0 + (side - w) // 2, x0 + side, y0 + (side + w) // 2), fill=fill)
    return image


def classes() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def make_shapes_corpus(root: Path, per_class: int, seed: int = 0, captions_per_image: int = 1,
                       prefix: str = "") -> list[dict]:
    """Pictures under root/images and root/captions.csv (filepath,caption,label); returns the rows."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for colour, shape in classes():
        for i in range(per_class):
            name = f"images/{prefix}{colour}_{shape}_{i:03d}.png"
            draw(shape, colour, rng).save(root / name)
            texts = [f"a {colour} {shape}", f"a picture of a {colour} {shape}", f"{colour} {shape}"]
            for caption in texts[:captions_per_image]:
                rows.append({"filepath": name, "caption": caption, "label": f"{colour} {shape}"})
    with (root / "captions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def write_jsonl(root: Path, rows: list[dict], name: str = "captions.jsonl") -> Path:
    path = root / name
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps({"image": row["filepath"], "caption": row["caption"]}) + "\n")
    return path


def write_folder(root: Path, rows: list[dict], folder: Path) -> Path:
    """Pictures copied into ``folder`` with a .txt beside each (one caption per line)."""
    folder.mkdir(parents=True, exist_ok=True)
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(row["filepath"], []).append(row["caption"])
    for filepath, texts in captions.items():
        source = root / filepath
        (folder / source.name).write_bytes(source.read_bytes())
        (folder / source.name).with_suffix(".txt").write_text("\n".join(texts) + "\n")
    return folder


def write_shards(root: Path, rows: list[dict], out: Path, per_shard: int = 20) -> str:
    """WebDataset shards out/shard-000.tar ...; returns a brace pattern covering them."""
    out.mkdir(parents=True, exist_ok=True)
    captions: dict[str, list[str]] = {}
    for row in rows:
        captions.setdefault(row["filepath"], []).append(row["caption"])
    items = list(captions.items())
    n_shards = (len(items) + per_shard - 1) // per_shard
    for s in range(n_shards):
        with tarfile.open(out / f"shard-{s:03d}.tar", "w") as tar:
            for filepath, texts in items[s * per_shard:(s + 1) * per_shard]:
                key = Path(filepath).stem
                for name, data in ((f"{key}.png", (root / filepath).read_bytes()),
                                   (f"{key}.txt", ("\n".join(texts) + "\n").encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(out / f"shard-{{000..{n_shards - 1:03d}}}.tar")
