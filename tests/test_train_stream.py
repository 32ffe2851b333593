"""Tar shards stream: dealt to ranks and loader workers (each sample once per epoch), resampled on request
or when shards are few, counted without reading members, and resumed mid-epoch exactly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import make_shapes_corpus, write_shards  # noqa: E402

PER_SHARD = 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[list[str], dict[str, str]]:
    """64 samples in 8 shards, each caption unique (the sample's name): (shard paths, caption → shard)."""
    root = tmp_path_factory.mktemp("corpus")
    rows = make_shapes_corpus(root, per_class=4)
    for row in rows:
        row["caption"] = Path(row["filepath"]).stem
    pattern = write_shards(root, rows, root / "shards", per_shard=PER_SHARD)
    from train.corpus import expand_shards

    paths = expand_shards([pattern])
    shard_of = {row["caption"]: paths[i // PER_SHARD] for i, row in enumerate(rows)}
    return paths, shard_of


class NameTokens:
    """A tokenizer that keeps the caption itself (its index), so a batch says which samples it holds."""

    def __init__(self, names):
        self.index = {name: i for i, name in enumerate(sorted(names))}
        self.names = sorted(names)

    def __call__(self, texts):
        return torch.tensor([[self.index[t]] for t in texts])


def _stream_data(shards, rank=0, world=2, workers=2, batch=4, resampled=False, n_samples=64):
    from train.images import TrainPictures
    from train.stream import ShardStream, StreamData

    paths, shard_of = shards
    stream = ShardStream(paths, TrainPictures(64), lambda image: torch.tensor(image.size), NameTokens(shard_of),
                         batch, seed=3, rank=rank, world=world, slots=max(1, workers), resampled=resampled)
    return StreamData(stream, n_samples, accum_steps=1, workers=workers, pin_memory=False)


def _names(data, epoch=0, start=0) -> list[list[str]]:
    names = data.stream.tokenizer.names
    return [[names[int(t)] for t in tokens[:, 0]] for _, tokens, _ in data.batches(epoch, start)]


def test_each_rank_and_worker_reads_its_own_shards_and_the_epoch_sees_every_sample_once(shards):
    _, shard_of = shards
    per_rank = [_names(_stream_data(shards, rank=rank)) for rank in (0, 1)]
    assert [len(batches) for batches in per_rank] == [8, 8]  # 64 samples / (4 × 2 ranks) steps, every rank
    seen = [name for batches in per_rank for batch in batches for name in batch]
    assert sorted(seen) == sorted(shard_of)  # every sample once
    files = [{shard_of[name] for batch in batches for name in batch} for batches in per_rank]
    assert len(files[0]) == len(files[1]) == 4 and not files[0] & files[1]  # each rank opens its own shards
    assert per_rank[0] == _names(_stream_data(shards, rank=0))  # the same again: seeded
    assert sorted(per_rank[0]) != sorted(_names(_stream_data(shards, rank=0), epoch=1))  # a new deal each epoch


def test_resampled_and_too_few_shards(shards):
    paths, shard_of = shards
    resampled = _stream_data(shards, resampled=True)
    batches = _names(resampled)
    assert len(batches) == 8 and set(n for b in batches for n in b) <= set(shard_of)
    few = _stream_data((paths[:3], shard_of), rank=0, world=2, workers=2)
    assert few.stream.resampled  # 3 shards for 4 slots: drawn with replacement
    assert "resampled" in few.describe()
    assert len(_names(few)) == 8


def test_counting_reads_headers_only_and_takes_declared_sizes(shards, tmp_path):
    from train.stream import count_samples

    paths, _ = shards
    assert count_samples(paths) == 64
    copies = []
    for path in paths[:2]:
        copy = tmp_path / Path(path).name
        copy.write_bytes(Path(path).read_bytes())
        copies.append(str(copy))
    (tmp_path / "sizes.json").write_text(json.dumps({Path(p).name: 1000 for p in copies}))
    assert count_samples(copies) == 2000  # what sizes.json says, as webdataset users expect


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_with_the_same_batches(shards, workers):
    reference = _stream_data(shards, workers=workers)
    batches, state = [], None
    for i, (pixels, tokens, _) in enumerate(reference.batches(0, 0)):
        batches.append((pixels.clone(), tokens.clone()))
        if i == 2:
            state = json.loads(json.dumps(reference.state()))  # as a checkpoint keeps it
    resumed = _stream_data(shards, workers=workers)
    resumed.load_state(state, epoch=0)
    again = [(p, t) for p, t, _ in resumed.batches(0, 3)]
    assert len(again) == len(batches) - 3
    for (p, t), (p2, t2) in zip(batches[3:], again, strict=True):
        assert torch.equal(t, t2) and torch.equal(p, p2)


def test_training_streams_shards_and_refuses_what_it_cannot_stream(shards, tmp_path):
    from train.config import TrainConfig
    from train.errors import TrainConfigError
    from train.loop import train

    paths, _ = shards
    pattern = str(Path(paths[0]).parent / "shard-{000..007}.tar")
    common = dict(model="clipsearch-tiny", progress=False, batch_size=8, output=str(tmp_path / "run"))
    summary = train(TrainConfig(data=[pattern], epochs=1, workers=1, **common))
    assert summary["steps"] == 8 and summary["train_pictures"] == 64
    assert (tmp_path / "run" / "model" / "open_clip_model.safetensors").is_file()
    with pytest.raises(TrainConfigError, match="--val-fraction"):
        train(TrainConfig(data=[pattern], val_fraction=0.1, **common))
    with pytest.raises(TrainConfigError, match="alone"):
        train(TrainConfig(data=[pattern, str(tmp_path / "captions.csv")], **common))
