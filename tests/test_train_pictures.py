"""The trainer decodes with the indexer's decoder: validation and `search eval` see exactly the pixels
the indexer embeds, hold no more than the model's input per picture, and train never imports indexer."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _pictures(folder: Path) -> list[Path]:
    """A big rotated photo, transparency (RGBA, palette), 16-bit grey, a small JPEG, a panorama."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    photo.save(folder / "rotated.jpg", quality=90, exif=exif.tobytes())
    photo.resize((3000, 400)).save(folder / "panorama.jpg", quality=90)
    photo.resize((60, 45)).save(folder / "small.jpg", quality=90)
    rgba = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    rgba.paste((200, 30, 30, 255), (50, 50, 150, 150))
    rgba.save(folder / "transparent.png")
    palette = rgba.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette.gif", transparency=0)
    Image.fromarray((rng.integers(0, 65535, (100, 140))).astype(np.uint16)).save(folder / "grey16.png")
    return sorted(folder.iterdir())


def test_validation_pixels_are_the_indexers_and_model_sized(tmp_path, tiny_encoder):
    from encoders.decode import decode_picture
    from encoders.preprocess import SplitPreprocess
    from indexer.prepare import prepare_file
    from indexer.scan import ScannedFile
    from train.corpus import Record
    from train.data import build_split
    from train.images import ModelPictures, read_bytes

    paths = _pictures(tmp_path / "p")
    pictures = ModelPictures(tiny_encoder.preprocess, tiny_encoder.image_size)
    indexer_split = SplitPreprocess(tiny_encoder.preprocess)
    for path in paths:
        indexed = prepare_file(ScannedFile(str(path), path.stat().st_size, 0), min(tiny_encoder.image_size),
                               indexer_split)
        ours = pictures(read_bytes(str(path)))
        assert ours.shape == (64, 64, 3), path.name
        assert np.array_equal(ours, indexed.pixels), path.name
        reference = tiny_encoder.preprocess(decode_picture(path.read_bytes(), 64).image)
        assert torch.equal(pictures.collate([ours])[0], reference), path.name

    records = [Record(str(p), [p.stem]) for p in paths]
    split = build_split(records, tiny_encoder.tokenizer, pictures, Counter())
    assert split.store.in_memory and len(split) == len(paths)
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in split.store.images)


def test_training_pictures_are_small_upright_and_on_white(tmp_path):
    from train.images import TrainPictures, read_bytes

    folder = tmp_path / "p"
    _pictures(folder)
    pictures = TrainPictures(64)
    assert pictures.side == 80
    rotated = pictures(read_bytes(str(folder / "rotated.jpg")))
    assert rotated.mode == "RGB" and rotated.width == 80 and 100 < rotated.height < 110  # portrait, as displayed
    transparent = pictures(read_bytes(str(folder / "transparent.png")))
    assert min(transparent.size) == 80 and transparent.getpixel((1, 1)) == (255, 255, 255)
    small = pictures(read_bytes(str(folder / "small.jpg")))
    assert small.size == (60, 45)  # never enlarged


def test_lazy_evaluation_leaves_out_what_cannot_be_read(tmp_path, tiny_encoder):
    from train.corpus import Record
    from train.data import build_split
    from train.eval import evaluate
    from train.images import ModelPictures

    paths = _pictures(tmp_path / "p")
    broken = tmp_path / "p" / "broken.png"
    broken.write_bytes(b"not a picture")
    records = [Record(str(p), [p.stem, f"picture {p.stem}"]) for p in [*paths, broken]]
    pictures = ModelPictures(tiny_encoder.preprocess, tiny_encoder.image_size)
    lazy = build_split(records, tiny_encoder.tokenizer, pictures, Counter(), in_memory=False)
    assert not lazy.store.in_memory and len(lazy) == len(records)
    result = evaluate(tiny_encoder.model, lazy, tiny_encoder.tokenizer, torch.device("cpu"), batch_size=3)
    assert result["n_images"] == len(paths) and result["n_captions"] == 2 * len(paths)
    assert result["unreadable"] == {"not a picture": 1}
    skipped = Counter()
    in_memory = build_split(records, tiny_encoder.tokenizer, pictures, skipped)
    assert skipped == Counter({"unreadable (not a picture)": 1})
    again = evaluate(tiny_encoder.model, in_memory, tiny_encoder.tokenizer, torch.device("cpu"), batch_size=3)
    for key in ("text_to_image", "image_to_text"):
        assert again[key] == pytest.approx(result[key])


def test_train_does_not_import_indexer():
    code = ("import sys, train.loop, train.eval, train.images; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'indexer'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
