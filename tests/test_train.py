"""The trainer: it learns, it loads every corpus format, it resumes, it accumulates and
distributes exactly, its exports load everywhere, and bad setups fail in one line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import classes, make_shapes_corpus, write_folder, write_jsonl, write_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _config(**kwargs):
    from train.config import TrainConfig

    defaults = dict(model="clipsearch-tiny", progress=False, seed=0)
    return TrainConfig(**{**defaults, **kwargs})


def _losses(run: Path) -> dict[int, float]:
    from train.metrics import read_metrics

    return {r["step"]: r["train/loss"] for r in read_metrics(run / "metrics.jsonl") if "train/loss" in r}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_corpus(root, per_class=4)
    return root


@pytest.fixture(scope="module")
def short_run(shapes, tmp_path_factory) -> Path:
    """Two epochs of 8 steps, a checkpoint every 3 steps: the reference for resume and export."""
    from train.loop import train

    out = tmp_path_factory.mktemp("run")
    train(_config(data=[str(shapes / "captions.csv")], output=str(out), epochs=2, batch_size=8, save_every=3))
    return out


# ------------------------------------------------------------------ (1) it learns, then searches


@pytest.mark.slow  # 40 s on an idle 2-core Zen 3 (BENCHMARKS.md, "Training"); several minutes under load
@pytest.mark.timeout(900)
def test_learns_shapes_and_colours_then_searches(tmp_path):
    from train.eval import evaluate_checkpoint
    from train.loop import train

    # Many distinct pictures for few epochs: a small ViT from scratch generalises from the
    # number of different pictures it sees, not from seeing the same ones again. Zero-shot after
    # 8 epochs: 0.93-0.97 over seeds 0-3 in fp32, 0.95-0.96 over seeds 0-1 in bf16 (chance: 1/16); after 6 it was
    # 0.82-0.94 depending on the seed and the CPU's step path, too close to the bar to test with.
    make_shapes_corpus(tmp_path / "train", per_class=128, seed=1)
    make_shapes_corpus(tmp_path / "test", per_class=6, seed=2)
    templates = tmp_path / "templates.txt"
    templates.write_text("a {}\n{}\n")
    out = tmp_path / "run"
    summary = train(_config(data=[str(tmp_path / "train" / "captions.csv")], output=str(out), epochs=8,
                            batch_size=32, lr=2e-3, label_column="label", templates=str(templates),
                            val_data=[str(tmp_path / "test" / "captions.csv")]))
    assert (out / "model" / "open_clip_model.safetensors").is_file()
    assert (out / "curves.png").stat().st_size > 0
    assert summary["validation"]["zero_shot"]["n_classes"] == 16
    result = evaluate_checkpoint(str(out / "model"), [str(tmp_path / "test" / "captions.csv")], "label",
                                 str(templates))
    assert result["zero_shot"]["top1"] >= 0.85, result

    # The exported folder indexes a folder, and a text query finds that kind of picture first.
    from encoders import ModelSpec, load_encoder
    from indexer import IndexOptions, Library, index_folders
    from search import SearchEngine

    encoder = load_encoder(ModelSpec.from_options(None, None, str(out / "model")))
    library = Library.open(tmp_path / "library", create=True)
    index_folders(library, encoder, [tmp_path / "test" / "images"], IndexOptions(workers=0))
    engine = SearchEngine(tmp_path / "library", encoder=encoder)
    for colour, shape in [("red", "circle"), ("blue", "square"), ("yellow", "triangle")]:
        top = engine.query(text=f"a {colour} {shape}", top_k=3)
        assert Path(top[0].path).name.startswith(f"{colour}_{shape}_"), [r.path for r in top]


# ------------------------------------------------------------------ (2) DDP equals one process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_model(seed: int = 0):
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)

    torch.manual_seed(seed)
    model = open_clip.create_model("clipsearch-tiny", output_dict=True)
    model.train()
    return model


def _global_batch(n: int = 8):
    torch.manual_seed(123)
    return torch.randn(n, 3, 64, 64), torch.randint(1, 1000, (n, 32))


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, world: int, port: int, out: str, accum: int) -> None:
    import torch.distributed as dist

    from train.loss import make_loss
    from train.step import accumulate_gradients

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = _tiny_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    images, texts = _global_batch()
    local = slice(rank * len(images) // world, (rank + 1) * len(images) // world)
    images, texts = images[local], texts[local]
    size = len(images) // accum
    micro = [(images[j * size:(j + 1) * size], texts[j * size:(j + 1) * size]) for j in range(accum)]
    loss = accumulate_gradients(ddp, make_loss("clip", rank, world), micro, no_sync=ddp.no_sync)
    dist.all_reduce(loss)
    if rank == 0:
        torch.save({"loss": loss / world, "grads": _grads(model)}, out)
    dist.barrier()
    dist.destroy_process_group()


def _reference(accum: int = 1):
    from train.loss import make_loss
    from train.step import accumulate_gradients

    model = _tiny_model()
    images, texts = _global_batch()
    size = len(images) // accum
    micro = [(images[j * size:(j + 1) * size], texts[j * size:(j + 1) * size]) for j in range(accum)]
    loss = accumulate_gradients(model, make_loss("clip"), micro)
    return loss, _grads(model)


def _assert_same(loss_a, grads_a, loss_b, grads_b) -> None:
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        # Multi-threaded float32 sums differ in their last bits from run to run: elements near zero are
        # compared against the tensor's own scale, not against 1e-6 (a 0.004 element once moved by 2.6e-6).
        scale = float(grads_b[name].abs().max())
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=max(1e-6, 1e-5 * scale)), name


@pytest.mark.parametrize("accum", [1, 2])
def test_two_ranks_equal_one_process(tmp_path, accum):
    import torch.multiprocessing as mp

    out = tmp_path / "rank0.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), accum), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    loss, grads = _reference()
    _assert_same(ddp["loss"], ddp["grads"], loss, grads)
    assert grads["logit_scale"].abs().item() > 0


# ------------------------------------------------------------------ (4) accumulation


def test_accumulation_equals_full_batch():
    loss, grads = _reference(accum=1)
    for accum in (2, 4):
        loss_a, grads_a = _reference(accum=accum)
        _assert_same(loss_a, grads_a, loss, grads)


def test_trimmed_captions_give_the_full_length_loss_and_gradients():
    """Token rows cut after the batch's last end token: same loss, same gradients as the full rows."""
    import open_clip

    from train.data import trim_tokens
    from train.loss import make_loss
    from train.model import TrainingTowers
    from train.step import accumulate_gradients

    tokens = open_clip.get_tokenizer("clipsearch-tiny")(["a red circle", "a picture of a big blue square", "x"] * 2)
    images = torch.randn(len(tokens), 3, 64, 64)
    trimmed = trim_tokens(tokens)
    assert trimmed.shape[1] == 9 < tokens.shape[1]
    towers = TrainingTowers(_tiny_model())
    assert towers.trims_text
    results = []
    for rows in (tokens, trimmed):
        towers.zero_grad()
        loss = accumulate_gradients(towers, make_loss("clip"), [(images, rows)])
        results.append((loss, _grads(towers.module)))
    _assert_same(*results[0], *results[1])


# ------------------------------------------------------------------ (3) resume mid-epoch


@pytest.mark.timeout(1800)
def test_resume_mid_epoch_reproduces_loss_curve(shapes, short_run, tmp_path):
    from train.loop import train

    reference = _losses(short_run)
    assert sorted(reference) == list(range(1, 17))
    out = tmp_path / "resumed"
    args = dict(data=[str(shapes / "captions.csv")], output=str(out), epochs=2, batch_size=8, save_every=3)
    train(_config(**args, max_steps=11))  # "crash" after step 11; last checkpoint: step 9, mid-epoch 2
    assert (out / "checkpoints" / "step_00000009.pt").is_file()
    summary = train(_config(**args, resume="latest"))
    assert summary["steps"] == 16
    resumed = _losses(out)
    assert sorted(resumed) == sorted(reference)
    for step in reference:
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step


# ------------------------------------------------------------------ (8) the export loads everywhere


def test_export_loads_with_open_clip_and_load_encoder(short_run, shapes):
    import open_clip
    from PIL import Image

    from encoders import ModelSpec, load_encoder

    folder = short_run / "model"
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert {"model_cfg", "preprocess_cfg"} <= config.keys()
    assert config["clipsearch"]["architecture"] == "clipsearch-tiny"
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    encoder = load_encoder(ModelSpec.from_options(None, None, str(folder)), device="cpu")
    assert encoder.fingerprint.architecture == "clipsearch-tiny"
    picture = Image.open(next((shapes / "images").glob("*.png")))
    with torch.no_grad():
        ours = model.encode_image(preprocess(picture.convert("RGB"))[None], normalize=True).numpy()
    assert ours.shape == (1, 128)
    theirs = encoder.encode_images([picture])
    assert abs(float((ours * theirs).sum()) - 1) < 1e-4
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(["a red circle"])
    with torch.no_grad():
        text = model.encode_text(tokens, normalize=True).numpy()
    assert abs(float((text * encoder.encode_texts(["a red circle"])).sum()) - 1) < 1e-4


# ------------------------------------------------------------------ (7) every corpus format


def test_corpus_formats_load_the_same_pairs(tmp_path):
    from train.corpus import read_corpus
    from train.data import build_split

    rows = make_shapes_corpus(tmp_path, per_class=2, captions_per_image=2)
    csv_corpus = read_corpus([str(tmp_path / "captions.csv")])
    expected = csv_corpus.pairs()
    assert len(csv_corpus.records) == 32 and len(expected) == 64  # two captions per picture
    jsonl = write_jsonl(tmp_path, rows)
    folder = write_folder(tmp_path, rows, tmp_path / "folder")
    pattern = write_shards(tmp_path, rows, tmp_path / "shards", per_shard=10)
    tsv = tmp_path / "captions.tsv"
    tsv.write_text("image\ttext\n" + "".join(f"{r['filepath']}\t{r['caption']}\n" for r in rows))
    assert read_corpus([str(jsonl)]).pairs() == expected
    assert read_corpus([str(folder)]).pairs() == expected
    assert read_corpus([pattern]).pairs() == expected
    assert read_corpus([str(tsv)], image_column="image", caption_column="text").pairs() == expected

    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)

    tokenizer = open_clip.get_tokenizer("clipsearch-tiny")
    from collections import Counter

    from train.images import TrainPictures

    splits = [build_split(read_corpus([spec]).records, tokenizer, TrainPictures(64), Counter())
              for spec in (str(tmp_path / "captions.csv"), pattern)]
    by_name = [{r.name: s.store.get(i).tobytes() for i, r in enumerate(s.records)} for s in splits]
    assert by_name[0] == by_name[1]  # the same pixels, from files and from tar members


def test_unreadable_pictures_are_skipped_and_counted(tmp_path):
    from collections import Counter

    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.corpus import read_corpus
    from train.data import build_split
    from train.images import TrainPictures

    make_shapes_corpus(tmp_path, per_class=1)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a picture")
    with (tmp_path / "captions.csv").open("a") as f:
        f.write("images/broken.png,a broken picture,broken\nimages/missing.png,a missing picture,missing\n")
    corpus = read_corpus([str(tmp_path / "captions.csv")])
    skipped = Counter()
    split = build_split(corpus.records, open_clip.get_tokenizer("clipsearch-tiny"), TrainPictures(64), skipped)
    assert len(split) == 16
    assert sum(skipped.values()) == 2


def test_val_fraction_holds_out_whole_pictures(tmp_path):
    from train.corpus import read_corpus
    from train.data import split_by_image

    make_shapes_corpus(tmp_path, per_class=5, captions_per_image=3)
    records = read_corpus([str(tmp_path / "captions.csv")]).records
    train_records, val_records = split_by_image(records, 0.2, seed=0)
    assert len(val_records) == 16 and len(train_records) == 64
    assert not {r.source for r in train_records} & {r.source for r in val_records}
    assert all(len(r.captions) == 3 for r in val_records)
    assert split_by_image(records, 0.2, seed=0)[1] == val_records


# ------------------------------------------------------------------ (5) bad configuration


@pytest.fixture()
def cli():
    import typer
    from typer.testing import CliRunner

    from train.cli import register

    app = typer.Typer()
    register(app)
    return lambda *args: CliRunner().invoke(app, list(args))


def _one_line_error(result, *fragments: str) -> None:
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert len(text.splitlines()) == 1 and text.startswith("error: "), text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in text, text


def test_bad_configurations_fail_in_one_line(cli, shapes, tmp_path):
    data = str(shapes / "captions.csv")
    common = ["--epochs", "1", "--output", str(tmp_path / "out")]
    _one_line_error(cli("train", "--data", data, "--caption-column", "text", "--model", "clipsearch-tiny",
                        *common), "no column 'text'", "caption")
    empty = tmp_path / "empty.csv"
    empty.write_text("filepath,caption\n")
    _one_line_error(cli("train", "--data", str(empty), "--model", "clipsearch-tiny", *common), "no (picture")
    _one_line_error(cli("train", "--data", data, "--model", "ViT-Nope", "--pretrained", "none", *common),
                    "unknown model")
    _one_line_error(cli("train", "--data", data, "--model", "clipsearch-tiny", "--batch-size", "500", *common),
                    "larger than the training corpus")
    _one_line_error(cli("train", "--data", str(tmp_path / "nowhere.csv"), *common), "not found")
    _one_line_error(cli("train", "--data", data, "--model", "clipsearch-tiny", "--precision", "fp8", *common),
                    "--precision")
    _one_line_error(cli("train", "--data", data, "--model", "clipsearch-tiny", "--resume", "latest", *common),
                    "no checkpoint")
    _one_line_error(cli("eval", "--checkpoint", str(tmp_path), "--data", data), "model folder")
    no_placeholder = tmp_path / "templates.txt"
    no_placeholder.write_text("a photo of something\n")
    _one_line_error(cli("train", "--data", data, "--model", "clipsearch-tiny", "--batch-size", "8", "--templates",
                        str(no_placeholder), *common), "--templates")
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_cli_module_is_light_and_main_exits_2():
    code = "import sys, train.cli; print('torch' in sys.modules, 'open_clip' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"]
    bad = subprocess.run([sys.executable, "-m", "train", "--data", "nowhere.csv", "--output", "x"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "not found" in bad.stderr


def test_eval_json_contract(cli, short_run, shapes):
    result = cli("eval", "--checkpoint", str(short_run / "model"), "--data", str(shapes / "captions.csv"),
                 "--label-column", "label", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["n_images"] == 64 and report["n_captions"] == 64 and report["n_unique_captions"] == 16
    for direction in ("text_to_image", "text_to_image_per_caption", "image_to_text"):
        assert set(report[direction]) == {"recall@1", "recall@5", "recall@10"}
        assert direction in report["queries"]
    assert report["zero_shot"]["n_classes"] == len(classes())
    text = cli("eval", "--checkpoint", str(short_run / "model"), "--data", str(shapes / "captions.csv"))
    assert "per unique caption" in text.output and "per caption" in text.output


def test_recall_counts_every_picture_with_the_caption():
    from train.eval import retrieval_metrics

    # Pictures 0 and 1 share the caption "x"; the text query "x" lands on picture 1 first.
    images = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0]])
    metrics = retrieval_metrics(images, texts, ["x", "x", "y"], [[0], [1], [2]], ks=(1,), block=1)
    assert metrics["text_to_image"]["recall@1"] == 1.0
    assert metrics["image_to_text"]["recall@1"] == 1.0
    # Caption "y" moved next to "x": picture 2 now finds "x" first, a miss.
    texts[2] = torch.tensor([0.55, 0.78])
    metrics = retrieval_metrics(images, texts, ["x", "x", "y"], [[0], [1], [2]], ks=(1, 5), block=2)
    assert metrics["image_to_text"]["recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text"]["recall@5"] == 1.0


def test_recall_per_caption_counts_each_caption_with_its_own_picture():
    """Per caption (papers, open_clip): each caption row is a query and only its own picture is a hit."""
    from train.eval import retrieval_metrics

    images = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [0.6, 0.8], [0.0, 1.0], [0.0, 1.0]])
    # Picture 0 and 1 carry "x" (both rank picture 1 first); picture 2 carries "y" twice over ("y", "y").
    metrics = retrieval_metrics(images, texts, ["x", "x", "y", "y"], [[0], [1], [2, 3]], ks=(1, 3))
    assert metrics["text_to_image"]["recall@1"] == 1.0  # 2 unique captions, both find a picture carrying them
    assert metrics["text_to_image_per_caption"]["recall@1"] == pytest.approx(3 / 4)  # row 0 wants picture 0
    assert metrics["text_to_image_per_caption"]["recall@3"] == 1.0  # ranked third, after pictures 1 and 2


# ------------------------------------------------------------------ (6) real data: Google → Twitter emoji


@pytest.mark.skipif(not (SHARED_DATA / "emoji-google" / "captions.csv").is_file()
                    or not (SHARED_DATA / "emoji-twitter" / "captions.csv").is_file(),
                    reason=f"emoji corpora not found under {SHARED_DATA}")
@pytest.mark.timeout(1800)
def test_emoji_google_to_twitter(tmp_path):
    from train.eval import evaluate_checkpoint
    from train.loop import train

    out = tmp_path / "emoji"
    train(_config(data=[str(SHARED_DATA / "emoji-google" / "captions.csv")], output=str(out), epochs=2,
                  batch_size=128))
    result = evaluate_checkpoint(str(out / "model"), [str(SHARED_DATA / "emoji-twitter" / "captions.csv")],
                                 "category")
    chance = 10 / result["n_images"]
    assert result["n_images"] > 3000
    assert result["text_to_image"]["recall@10"] > 5 * chance, result
    assert result["image_to_text"]["recall@10"] > 5 * chance, result
    # Category names ("Smileys & Emotion") never appear in captions: reported, not asserted.
    assert result["zero_shot"]["n_classes"] == 10
