"""Issue 5, "any bad file": a folder full of trouble is indexed with exit code 0, every good picture
embedded, every bad one listed with a reason; hangs are timed out, decoder crashes cost one file."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, draw_picture, library_rows, make_pictures, run_cli
from PIL import Image, ImageOps

import indexer
from indexer.store import FAILED, OK, PictureRow

pytestmark = pytest.mark.timeout(300)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring 10 gigapixels, with a tiny payload."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _png_chunk(b"IEND", b""))


def build_trouble(folder: Path) -> tuple[set[str], set[str]]:
    """(good paths, bad paths) of a folder holding every kind of trouble the issue lists."""
    folder.mkdir(parents=True)
    good: list[Path] = make_pictures(folder / "plain", 4)
    pic = draw_picture(101, (120, 90))

    def save(name: str, image: Image.Image, **kw) -> None:
        path = folder / name
        image.save(path, **kw)
        good.append(path)

    save("tiny_1x1.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("panorama_20000x100.png", Image.new("RGB", (20000, 100), (10, 200, 10)))
    save("cmyk.jpg", pic.convert("CMYK"), quality=90)
    save("sixteen_bit.png", Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20))
    palette = draw_picture(102).convert("P")
    save("palette_transparent.png", palette, transparency=0)
    save("grey_alpha_LA.png", draw_picture(103).convert("LA"))
    frames = [draw_picture(110 + i) for i in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    good.append(folder / "animated.gif")
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated_exif6.jpg", draw_picture(104, (120, 80)), exif=exif.tobytes(), quality=95)
    save("progressive.jpg", draw_picture(105), progressive=True, quality=85)
    save("picture.webp", draw_picture(106))
    pages = [draw_picture(120 + i) for i in range(3)]
    pages[0].save(folder / "multipage.tif", save_all=True, append_images=pages[1:])
    good.append(folder / "multipage.tif")
    save("name with spaces.png", draw_picture(107))
    save("café 日本 🐱.png", draw_picture(108))
    undecodable = Path(os.fsdecode(os.fsencode(str(folder)) + b"/bad\xffname.png"))
    draw_picture(109).save(undecodable, format="PNG")
    good.append(undecodable)
    (folder / "album.jpg").mkdir()  # a folder named like a picture: entered, not failed
    draw_picture(111).save(folder / "album.jpg" / "inside.png")
    good.append(folder / "album.jpg" / "inside.png")
    shutil.copy(folder / "plain" / "pic000.png", folder / "copy_of_pic000.png")  # exact duplicate
    good.append(folder / "copy_of_pic000.png")
    os.symlink(folder, folder / "plain" / "loop")  # a symlink loop: not entered twice

    bad: list[Path] = []

    def write(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        bad.append(folder / name)

    jpeg = (folder / "progressive.jpg").read_bytes()
    png = (folder / "plain" / "pic001.png").read_bytes()
    write("empty.jpg", b"")
    write("truncated.jpg", (folder / "cmyk.jpg").read_bytes()[:400])
    write("truncated.png", png[: len(png) // 2])
    write("random_bytes.jpg", np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    write("text.png", b"this is a text file, not a picture\n" * 20)
    write("bomb.png", bomb_png())
    assert jpeg
    os.symlink(folder / "nowhere.jpg", folder / "broken_link.jpg")
    bad.append(folder / "broken_link.jpg")
    os.mkfifo(folder / "fifo.jpg")  # reading it would block forever
    bad.append(folder / "fifo.jpg")
    return {str(p) for p in good}, {str(p) for p in bad}


def _rows(library: Path) -> dict[str, PictureRow]:
    return {row.path: row for row in library_rows(indexer.Library.open(library))}


def test_folder_full_of_trouble_cli(tmp_path):
    """The whole list through the real CLI: exit 0, every good picture in, every bad one with a reason."""
    folder = tmp_path / "trouble"
    good, bad = build_trouble(folder)
    library = tmp_path / "lib"
    # A FIFO that blocked the run would end it at the timeout (TimeoutExpired), failing the test.
    result = run_cli("index", str(folder), "--library", str(library), *TINY, "--json", timeout=240)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["failed"] == len(bad)
    assert summary["duplicates"] == 1  # the copy's vector is copied, not encoded again
    assert summary["embedded"] == len(good) - 1

    rows = _rows(library)
    assert {p for p, r in rows.items() if r.status == OK} == good
    assert {p for p, r in rows.items() if r.status == FAILED} == bad
    assert all(rows[p].error for p in bad)
    reasons = {Path(p).name: rows[p].error for p in bad}
    assert "empty" in reasons["empty.jpg"]
    assert "truncated" in reasons["truncated.jpg"] and "truncated" in reasons["truncated.png"]
    assert "not a picture" in reasons["random_bytes.jpg"] and "not a picture" in reasons["text.png"]
    assert "pixels" in reasons["bomb.png"] or "bomb" in reasons["bomb.png"].lower()
    assert "broken symbolic link" in reasons["broken_link.jpg"]
    assert "not a regular file" in reasons["fifo.jpg"]
    copy, original = rows[str(folder / "copy_of_pic000.png")], rows[str(folder / "plain" / "pic000.png")]
    assert copy.vector == original.vector

    status = run_cli("status", "--library", str(library), "--failed", "--json", check=True)
    listed = json.loads(status.stdout)
    assert {f["path"] for f in listed["failures"]} == bad
    assert all(f["error"] for f in listed["failures"])
    text = run_cli("status", "--library", str(library), "--failed", check=True).stdout
    assert all(Path(p).name in text for p in bad)

    again = run_cli("index", str(folder), "--library", str(library), *TINY, "--json", check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["embedded"] == 0  # nothing re-done


def test_pictures_are_embedded_as_displayed(tmp_path, tiny_encoder):
    """EXIF-rotated JPEGs upright, animated GIFs and TIFFs by their first frame, sizes as displayed."""
    folder = tmp_path / "p"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    draw_picture(5, (120, 80)).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    frames = [draw_picture(20 + i) for i in range(2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    library = indexer.Library.open(tmp_path / "lib", create=True)
    indexer.index_folders(library, tiny_encoder, [folder])
    rows = _rows(tmp_path / "lib")
    rotated = rows[str(folder / "rotated.jpg")]
    assert (rotated.width, rotated.height) == (80, 120)
    upright = ImageOps.exif_transpose(Image.open(folder / "rotated.jpg"))
    expected = tiny_encoder.encode_images([upright])[0]
    stored = Image.fromarray(np.asarray(Image.open(folder / "rotated.jpg").convert("RGB")))  # EXIF dropped
    sideways = tiny_encoder.encode_images([stored])[0]
    got = np.frombuffer(rotated.vector, dtype=np.float32)
    assert float(got @ expected) > 0.999
    assert float(got @ expected) > float(got @ sideways)
    first = np.frombuffer(rows[str(folder / "anim.gif")].vector, dtype=np.float32)
    gif = Image.open(folder / "anim.gif")
    assert float(first @ tiny_encoder.encode_images([gif.convert("RGB")])[0]) > 0.999


def test_fast_jpeg_decoding_gives_pillows_pixels(tmp_path, monkeypatch):
    """simplejpeg's scaled decode is only a faster way to Pillow's draft decode: same pixels, same EXIF
    rotation, same size; CMYK and broken files still go through Pillow for its reasons."""
    from indexer import decode

    assert decode.simplejpeg is not None, "simplejpeg is a dependency: the fast path must be tested"
    exif = Image.Exif()
    exif[0x0112] = 6
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1500, 2000, 3), dtype=np.uint8))
    cases = {
        "baseline_420.jpg": (big, {"quality": 90}),
        "progressive.jpg": (big, {"quality": 85, "progressive": True}),
        "full_chroma_444.jpg": (big, {"quality": 95, "subsampling": 0}),
        "grey.jpg": (big.convert("L"), {"quality": 90}),
        "rotated.jpg": (big, {"quality": 90, "exif": exif.tobytes()}),
        "small.jpg": (draw_picture(3, (150, 100)), {"quality": 90}),
        # A phone's file with a second picture too small to stand in for it (a depth map, say): Pillow calls it MPO.
        "multi_picture.jpg": (big, {"quality": 90, "format": "MPO", "save_all": True,
                                    "append_images": [draw_picture(4, (160, 120))]}),
        "cmyk.jpg": (big.convert("CMYK"), {"quality": 90}),
    }
    for name, (image, options) in cases.items():
        data_path = tmp_path / name
        image.save(data_path, **options)
        data = data_path.read_bytes()
        opened = Image.open(data_path)
        assert opened.format == ("MPO" if name == "multi_picture.jpg" else "JPEG"), name
        took_fast_path = decode._simplejpeg_scaled(data, opened, 224) is not None
        assert took_fast_path == (name != "cmyk.jpg"), name
        fast = decode.decode_picture(data, 224)
        with monkeypatch.context() as m:
            m.setattr(decode, "simplejpeg", None)
            reference = decode.decode_picture(data, 224)
        assert fast.image.mode == reference.image.mode == "RGB", name
        assert np.array_equal(np.asarray(fast.image), np.asarray(reference.image)), name
        assert (fast.width, fast.height) == (reference.width, reference.height), name
    assert decode.decode_picture((tmp_path / "rotated.jpg").read_bytes(), 224).image.size[0] < \
        decode.decode_picture((tmp_path / "baseline_420.jpg").read_bytes(), 224).image.size[0]
    truncated = (tmp_path / "baseline_420.jpg").read_bytes()[:20000]
    with pytest.raises(decode.DecodeError, match="truncated"):
        decode.decode_picture(truncated, 224)


def test_decode_workers_run_below_the_encoder_on_a_cpu():
    """On a CPU the decoders yield to the encoder's threads (BENCHMARKS.md); with a GPU they are the
    bottleneck and keep the indexer's priority."""
    import torch

    from indexer.pipeline import decode_niceness
    from indexer.workers import DecodePool

    ours = os.nice(0)
    pool = DecodePool(lambda _: os.nice(0), lambda item, reason: reason, workers=2, window=4,
                      nice=decode_niceness(torch.device("cpu")))
    assert set(pool.imap(range(6))) == {19}
    assert decode_niceness(torch.device("cuda")) == 0
    assert os.nice(0) == ours  # the indexer itself is untouched


def test_hang_crash_and_vanishing_file(tmp_path, tiny_encoder, monkeypatch):
    """A decode that hangs is timed out, a decoder that dies costs its file, a file deleted after the
    scan is simply not there; the run goes on and ends normally."""
    import indexer.pipeline as pipeline
    import indexer.prepare as prepare

    folder = tmp_path / "p"
    make_pictures(folder, 8)
    for name in ("hangs.png", "crashes.png", "vanishes.png"):
        draw_picture(len(name)).save(folder / name)
    real_decode = prepare.decode_picture

    def decode(data, min_side, max_pixels=indexer.MAX_PIXELS):
        if data == (folder / "hangs.png").read_bytes():
            time.sleep(3600)
        if data == (folder / "crashes.png").read_bytes():
            os.kill(os.getpid(), 11)  # SIGSEGV, as a decoder bug would
        return real_decode(data, min_side, max_pixels)

    real_scan = pipeline.scan

    def scan_then_delete(roots, options):
        files = list(real_scan(roots, options))
        (folder / "vanishes.png").unlink()
        return files

    monkeypatch.setattr(prepare, "decode_picture", decode)
    monkeypatch.setattr(pipeline, "scan", scan_then_delete)
    library = indexer.Library.open(tmp_path / "lib", create=True)
    summary = indexer.index_folders(library, tiny_encoder, [folder],  # the hung decode is ended by its timeout
                                    indexer.IndexOptions(workers=2, batch_size=4, decode_timeout=3))
    rows = _rows(tmp_path / "lib")
    assert summary.added == 8 and summary.failed == 2
    assert "timed out" in rows[str(folder / "hangs.png")].error
    assert "crashed" in rows[str(folder / "crashes.png")].error
    assert str(folder / "vanishes.png") not in rows
    assert sum(r.status == OK for r in rows.values()) == 8
    assert library.vector_index().ntotal == 8
