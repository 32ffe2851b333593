"""The recipe's knobs and the CPU path: label smoothing is open_clip's loss with smoothed targets, the starting
temperature is the one asked for, training without a random crop sees exactly the indexer's pixels, bf16 only
where the CPU has it natively and it measured faster, channels-last for convolutional towers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shapes_corpus  # noqa: E402


def _config(**kwargs):
    from train.config import TrainConfig

    return TrainConfig(**{**dict(model="clipsearch-tiny", progress=False, seed=0, batch_size=8), **kwargs})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_corpus(root, per_class=1)
    return root / "captions.csv"


def _features(n: int = 6, dim: int = 16):
    torch.manual_seed(0)
    return F.normalize(torch.randn(n, dim), dim=-1), F.normalize(torch.randn(n, dim), dim=-1), torch.tensor(20.0)


def test_label_smoothing_is_open_clips_loss_with_smoothed_targets():
    from open_clip.loss import ClipLoss

    from train.loss import SmoothedClipLoss, make_loss

    images, texts, scale = _features()
    assert type(make_loss("clip")) is ClipLoss  # no smoothing: open_clip's own class
    assert torch.allclose(SmoothedClipLoss(0.0)(images, texts, scale), ClipLoss()(images, texts, scale))
    logits = scale * images @ texts.T
    labels = torch.arange(len(images))
    expected = (F.cross_entropy(logits, labels, label_smoothing=0.1)
                + F.cross_entropy(logits.T, labels, label_smoothing=0.1)) / 2
    smoothed = make_loss("clip", label_smoothing=0.1)(images, texts, scale)
    assert torch.allclose(smoothed, expected) and not torch.allclose(smoothed, ClipLoss()(images, texts, scale))


def test_label_smoothing_by_default_with_the_softmax_loss_only(corpus, tmp_path):
    """The default smooths open_clip's softmax loss; SigLIP's sigmoid loss has no targets to smooth: none there,
    and asking for it with --loss siglip is refused."""
    from open_clip.loss import SigLipLoss

    from train.config import DEFAULT_LABEL_SMOOTHING
    from train.distributed import Dist
    from train.errors import TrainConfigError
    from train.loop import Run
    from train.loss import SmoothedClipLoss

    def built_loss(**kwargs):
        run = Run(_config(data=[str(corpus)], output=str(tmp_path / kwargs.get("loss", "clip")), epochs=1, **kwargs),
                  Dist(), time.monotonic())
        run.setup()
        return run.cfg.label_smoothing, run.loss_fn

    smoothing, loss = built_loss()
    assert smoothing == DEFAULT_LABEL_SMOOTHING > 0
    assert isinstance(loss, SmoothedClipLoss) and loss.label_smoothing == DEFAULT_LABEL_SMOOTHING
    smoothing, loss = built_loss(loss="siglip")
    assert smoothing == 0.0 and isinstance(loss, SigLipLoss)
    with pytest.raises(TrainConfigError, match="--label-smoothing"):
        _config(data=[str(corpus)], output=str(tmp_path / "x"), loss="siglip", label_smoothing=0.1).validate()


def test_the_starting_temperature_is_the_one_asked_for(corpus, tmp_path):
    from train.model import build_model

    def start_scale(**kwargs) -> float:
        return build_model(_config(data=[str(corpus)], output=str(tmp_path), **kwargs),
                           torch.device("cpu")).model.logit_scale.exp().item()

    assert start_scale() == pytest.approx(1 / 0.07, rel=1e-5)
    assert start_scale(init_temperature=0.03) == pytest.approx(1 / 0.03, rel=1e-5)


def test_without_a_random_crop_training_sees_the_indexers_pixels(corpus, tmp_path):
    """--crop-scale 1: each training batch is bit for bit the indexer's preprocess of the decoded pictures."""
    from encoders.decode import decode_picture
    from train.distributed import Dist
    from train.loop import Run
    from train.model import build_model

    run = Run(_config(data=[str(corpus)], output=str(tmp_path / "run"), crop_scale=1.0, epochs=1), Dist(),
              time.monotonic())
    run.setup()
    assert run.data.loader.dataset.per_picture is None  # no per-picture work left in the loader
    pixels, tokens, failed = next(run.data.batches(0, 0))
    order = run.data.sampler.order(0)[:len(pixels)]
    preprocess = build_model(_config(data=[str(corpus)], output=str(tmp_path)), torch.device("cpu")).preprocess
    expected = torch.stack([preprocess(decode_picture(Path(run.data.split.records[i].source).read_bytes(), 64).image)
                            for i in order])
    assert torch.equal(pixels, expected)
    assert failed.sum() == 0 and tokens.shape[0] == len(pixels)


def test_the_default_random_crop_is_cut_for_the_whole_batch_at_once(corpus, tmp_path):
    """Each picture's box is torchvision's draw for its seed; the batch is those crops resized (bilinear)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from train.augment import BatchCrop
    from train.data import sample_seed, seeded
    from train.distributed import Dist
    from train.loop import Run

    run = Run(_config(data=[str(corpus)], output=str(tmp_path / "run"), epochs=1), Dist(), time.monotonic())
    run.setup()
    batch_crop = run.data.loader.dataset.per_picture.__self__
    scale = (run.cfg.crop_scale, 1.0)
    assert isinstance(batch_crop, BatchCrop) and batch_crop.crop.scale == scale and scale[0] < 1
    pixels, _, _ = next(run.data.batches(0, 0))
    order = run.data.sampler.order(0)[:len(pixels)]
    transform = run.built.train_transform
    for row, index in zip(pixels, order, strict=True):
        image = run.data.split.store.get(index)
        top, left, h, w = seeded(sample_seed(0, 0, index), lambda im: transform.transforms[0].get_params(
            im, scale, (3 / 4, 4 / 3)), image)
        assert scale[0] * image.width * image.height <= w * h * 1.02
        resized = TF.resized_crop(TF.to_tensor(image), top, left, h, w, [64, 64], InterpolationMode.BILINEAR,
                                  antialias=False)
        expected = TF.normalize(resized, batch_crop.mean, batch_crop.std)
        inner = (slice(None), slice(2, -2), slice(2, -2))  # at the crop's edge grid_sample reads beyond it
        assert torch.allclose(row[inner], expected[inner], atol=1e-4)


def test_pictures_of_several_sizes_share_one_batch():
    import open_clip
    from PIL import Image

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.augment import BatchCrop
    from train.model import _transforms

    train, _, _ = _transforms(open_clip.create_model("clipsearch-tiny"), 0.9)
    batch_crop = BatchCrop.of(train)
    wide, tall = Image.new("RGB", (120, 80), (255, 0, 0)), Image.new("RGB", (80, 100), (0, 0, 255))
    out = batch_crop.collate([batch_crop.draw(wide), batch_crop.draw(tall)])
    assert out.shape == (2, 3, 64, 64)
    red = _normalized((1.0, 0.0, 0.0), batch_crop)
    blue = _normalized((0.0, 0.0, 1.0), batch_crop)
    assert torch.allclose(out[0], red[:, None, None].expand(3, 64, 64), atol=1e-5)  # never the padding
    assert torch.allclose(out[1], blue[:, None, None].expand(3, 64, 64), atol=1e-5)


def _normalized(rgb, batch_crop) -> torch.Tensor:
    return (torch.tensor(rgb) - torch.tensor(batch_crop.mean)) / torch.tensor(batch_crop.std)


def _resnet_holder():
    from open_clip.modified_resnet import ModifiedResNet

    holder = torch.nn.Module()
    holder.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    return holder


SECONDS = {"fp32": 1.0, "bf16": 1.02, "bf16-math-attention": 0.6}  # injected timings: no clock in these tests


def test_bf16_only_where_native_and_measured_faster():
    from train.fastpath import FP32, PATHS, choose

    assert choose(SECONDS, native=True) == PATHS["bf16-math-attention"]
    assert choose(SECONDS, native=False) == FP32  # emulated bf16: never chosen, however it timed
    assert choose({**SECONDS, "bf16-math-attention": 1.3}, native=True) == FP32  # slower
    assert choose({**SECONDS, "bf16-math-attention": 0.98}, native=True) == FP32  # within MIN_GAIN: not worth it
    assert choose({**SECONDS, "bf16": 0.5}, native=True) == PATHS["bf16"]
    # Asked for bf16: the faster bf16 kernel, even where bf16 is slower than fp32 or emulated.
    assert choose({**SECONDS, "bf16-math-attention": 1.3}, native=False, precision="bf16") == PATHS["bf16"]


def _built_and_towers():
    from types import SimpleNamespace

    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.model import TrainingTowers

    model = open_clip.create_model("clipsearch-tiny")
    built = SimpleNamespace(model=model, architecture="clipsearch-tiny", image_size=(64, 64),
                            tokenizer=open_clip.get_tokenizer("clipsearch-tiny"))
    return built, TrainingTowers(model)


def test_the_path_is_measured_once_per_model_and_machine(monkeypatch, tmp_path):
    from train import fastpath

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = []
    monkeypatch.setattr(fastpath, "measure", lambda *args: measured.append(args) or dict(SECONDS))
    built, towers = _built_and_towers()
    cfg = _config(data=[], output=str(tmp_path))
    monkeypatch.setattr(fastpath, "native_bf16", lambda: False)
    assert fastpath.cpu_path(built, towers, cfg) == fastpath.FP32 and not measured  # emulated bf16: not measured
    monkeypatch.setattr(fastpath, "native_bf16", lambda: True)
    assert fastpath.cpu_path(built, towers, cfg, "fp32") == fastpath.FP32 and not measured  # asked for: kept
    assert fastpath.cpu_path(built, towers, cfg).name == "bf16-math-attention"
    assert fastpath.cpu_path(built, towers, cfg).name == "bf16-math-attention"  # from the cache
    assert fastpath.cpu_path(built, towers, cfg, "bf16").name == "bf16-math-attention"
    assert len(measured) == 1 and (tmp_path / "clipsearch" / "training.json").is_file()
    images, texts = measured[0][2:]
    assert images.shape == (cfg.batch_size, 3, 64, 64) and texts.shape[0] == cfg.batch_size
    fastpath.cpu_path(built, towers, _config(data=[], output=str(tmp_path), batch_size=16))  # another step to time
    assert len(measured) == 2


def _exported(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "model" / "open_clip_model.safetensors")


def test_a_measured_fp32_run_is_the_forced_fp32_run_bit_for_bit(corpus, tmp_path, monkeypatch):
    """Measuring (on a copy of the model, its random state kept) leaves no trace: where it ends in fp32, the run
    is the one ``--precision fp32`` makes, which measures nothing."""
    from train import fastpath
    from train.loop import train
    from train.metrics import read_metrics

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fastpath, "native_bf16", lambda: True)
    measured = []
    measure = fastpath.measure
    monkeypatch.setattr(fastpath, "measure", lambda *args: measured.append(1) or measure(*args))
    monkeypatch.setattr(fastpath, "choose", lambda seconds, native, precision=None: fastpath.FP32)
    runs = {}
    for precision in ("fp32", None):
        out = tmp_path / str(precision)
        train(_config(data=[str(corpus)], output=str(out), epochs=2, precision=precision))
        runs[precision] = out
    assert measured == [1]
    losses = [[r["train/loss"] for r in read_metrics(out / "metrics.jsonl") if "train/loss" in r]
              for out in runs.values()]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    forced, chosen = (_exported(out) for out in runs.values())
    assert forced.keys() == chosen.keys() and all(torch.equal(forced[k], chosen[k]) for k in forced)


def test_channels_last_for_convolutional_towers_on_a_gpu_only():
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)
    from train.fastpath import to_channels_last, wants_channels_last

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not wants_channels_last(open_clip.create_model("clipsearch-tiny"), cuda)
    resnet = _resnet_holder()
    assert wants_channels_last(resnet, cuda) and not wants_channels_last(resnet, cpu)
    to_channels_last(resnet)
    assert resnet.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_a_resumed_run_keeps_the_path_it_was_trained_with(corpus, tmp_path, monkeypatch):
    import json

    from train import fastpath
    from train.loop import train

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fastpath, "native_bf16", lambda: True)
    monkeypatch.setattr(fastpath, "measure", lambda *args: dict(SECONDS))
    args = dict(data=[str(corpus)], output=str(tmp_path / "run"), epochs=2, save_every=1)
    train(_config(**args, max_steps=1))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "another-cache"))  # as on another machine
    monkeypatch.setattr(fastpath, "measure", lambda *args: {**SECONDS, "bf16-math-attention": 2.0})  # slower there
    train(_config(**args, resume="latest"))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step_path"] == "bf16-math-attention"
