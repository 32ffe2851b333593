"""Datasets, the epoch sampler and loaders: reproducible from ``--seed`` and resumable mid-epoch.

Every sample's randomness (which caption, which crop) comes from (seed, epoch, index) alone,
and each epoch's order from (seed, epoch), so a run resumed at step k sees exactly the
batches the uninterrupted run saw, whatever the number of workers.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .corpus import Record
from .errors import TrainConfigError
from .images import ImageStore, ModelPictures, TrainPictures, failure_reason


@dataclass
class Split:
    """Pictures with their tokenised captions, ready for a loader."""

    records: list[Record]
    store: ImageStore
    captions: list[str]             # every caption, in record order
    caption_index: list[list[int]]  # record → its captions' rows in ``tokens``/``captions``
    tokens: torch.Tensor            # n_captions × context_length (int32)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.records]

    def subset(self, keep: list[int]) -> Split:
        """The pictures at ``keep`` (in that order) with their captions; the pictures themselves are shared."""
        records = [self.records[i] for i in keep]
        rows = [row for i in keep for row in self.caption_index[i]]
        captions, caption_index = _caption_rows(records)
        store = self.store.view(keep)
        return Split(records, store, captions, caption_index, self.tokens[rows])


def split_by_image(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out a fraction of the *pictures* (all captions of a picture fall on one side)."""
    if not fraction:
        return records, []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(records) * fraction))
    held = set(order[:n_val])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def tokenize_all(tokenizer, captions: list[str], chunk: int = 8192) -> torch.Tensor:
    parts = [tokenizer(captions[i:i + chunk]).to(torch.int32) for i in range(0, len(captions), chunk)]
    return torch.cat(parts) if parts else torch.zeros((0, 1), dtype=torch.int32)


def _caption_rows(records: list[Record]) -> tuple[list[str], list[list[int]]]:
    captions, caption_index = [], []
    for record in records:
        caption_index.append(list(range(len(captions), len(captions) + len(record.captions))))
        captions.extend(record.captions)
    return captions, caption_index


def count_unreadable(store: ImageStore, skipped: Counter) -> None:
    for reason, n in store.unreadable.items():
        skipped[f"unreadable ({reason})"] += n
    store.unreadable.clear()


def build_split(records: list[Record], tokenizer, pictures: TrainPictures | ModelPictures, skipped: Counter,
                in_memory: bool | None = None) -> Split:
    """Decode (into memory when it fits), drop unreadable pictures (counted), tokenise captions."""
    store = ImageStore(records, pictures, in_memory=in_memory)
    keep = store.readable()
    count_unreadable(store, skipped)
    if len(keep) != len(records):
        records = [records[i] for i in keep]
        store.keep(keep)
    captions, caption_index = _caption_rows(records)
    return Split(records, store, captions, caption_index, tokenize_all(tokenizer, captions))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 1_000_000_007 + index) % (2 ** 63)


def seeded(seed: int, transform, image):
    """``transform(image)`` with torch's CPU generator seeded for this sample alone (its random crop)."""
    # The CPU generator alone: torch.manual_seed would also queue a lazy CUDA seeding,
    # which records a stack trace each time (half of the sample's time on a CUDA build).
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        return transform(image)
    finally:
        generator.set_state(state)


class TrainPairs(Dataset):
    """(epoch, index) → (the picture as ``per_picture`` makes it, one of its captions' tokens, pictures that failed).

    ``per_picture`` runs with torch's generator seeded for this sample alone: a whole transform (the
    augmented tensor), ``BatchCrop.draw`` (the picture and its crop box), or None (the stored picture as it is).
    """

    def __init__(self, split: Split, per_picture, seed: int):
        self.split, self.per_picture, self.seed = split, per_picture, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        failed = 0
        for attempt in range(len(self.split)):
            picked = (index + attempt) % len(self.split)
            try:
                image = self.split.store.get(picked)
                break
            except Exception:  # lazily decoded picture that cannot be read: take the next one
                failed += 1
        else:
            raise RuntimeError("no readable picture in the corpus")
        rng = random.Random(seed)
        rows = self.split.caption_index[picked]
        tokens = self.split.tokens[rows[rng.randrange(len(rows))]].long()
        return (image if self.per_picture is None else seeded(seed, self.per_picture, image)), tokens, failed


class EvalImages(Dataset):
    """index → the model-size pixels of a picture (``ModelPictures``), or None when it cannot be read."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        try:
            return index, self.split.store.get(index), None
        except Exception as e:  # a lazily decoded picture that cannot be read: left out of the metrics
            return index, None, failure_reason(e)


class EpochBatches(Sampler):
    """This rank's micro-batches of one epoch, from optimizer step ``start_step`` on.

    Step s of an epoch uses the picture indices ``perm[s·G : (s+1)·G]`` with G = batch ×
    accum × world; micro-batch j of rank r is the slice at ``(j·world + r)·batch``. The last
    incomplete global batch is dropped (a contrastive batch needs its full set of negatives).
    """

    def __init__(self, n: int, batch_size: int, accum_steps: int, rank: int, world: int, seed: int):
        self.n, self.batch_size, self.accum, self.rank, self.world, self.seed = (
            n, batch_size, accum_steps, rank, world, seed)
        self.global_batch = batch_size * accum_steps * world
        self.steps_per_epoch = n // self.global_batch
        if self.steps_per_epoch < 1:
            raise TrainConfigError(
                f"the effective batch ({batch_size} × accum {accum_steps} × {world} process(es) = "
                f"{self.global_batch}) is larger than the training corpus ({n} pictures); lower --batch-size")
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self):
        perm = self.order(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            for j in range(self.accum):
                start = step * self.global_batch + (j * self.world + self.rank) * self.batch_size
                yield [(self.epoch, i) for i in perm[start:start + self.batch_size]]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum


def trim_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Cut a batch of token rows after its last end token (the highest id in each row)."""
    return tokens[:, :int(tokens.argmax(dim=1).max()) + 1]


class TrainCollate:
    """Items → (pixels, tokens, failed): ``batch_pixels`` makes the batch's input from the items' pictures
    (None: they are tensors already, stacked); token rows optionally cut to the batch's longest caption."""

    def __init__(self, batch_pixels=None, trim_text: bool = False):
        self.batch_pixels, self.trim_text = batch_pixels, trim_text

    def __call__(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, tokens, failed = zip(*batch, strict=True)
        pixels = torch.stack(images) if self.batch_pixels is None else self.batch_pixels(list(images))
        tokens = torch.stack(tokens)
        return pixels, trim_tokens(tokens) if self.trim_text else tokens, torch.tensor(failed)


def train_loader(split: Split, per_picture, batch_pixels, sampler: EpochBatches, seed: int, workers: int,
                 pin_memory: bool = False, trim_text: bool = False) -> DataLoader:
    """``per_picture`` in the loader, ``batch_pixels`` once per batch (``TrainPairs``, ``TrainCollate``);
    ``trim_text``: token rows cut to the batch's longest caption (for ``TrainingTowers``)."""
    kwargs = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    return DataLoader(TrainPairs(split, per_picture, seed), batch_sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, collate_fn=TrainCollate(batch_pixels, trim_text), **kwargs)


class EvalBatch:
    """Collates ``EvalImages`` items: the input batch of the readable ones, their indices, the failures."""

    def __init__(self, pictures: ModelPictures):
        self.pictures = pictures

    def __call__(self, items: list) -> tuple[torch.Tensor | None, list[int], list[str]]:
        readable = [(i, pixels) for i, pixels, _ in items if pixels is not None]
        batch = self.pictures.collate([pixels for _, pixels in readable]) if readable else None
        return batch, [i for i, _ in readable], [reason for _, pixels, reason in items if pixels is None]


class RecordData:
    """Training batches from a listed corpus (CSV/TSV, JSONL, folder); the loop's view of them.

    Every sample's randomness comes from (seed, epoch, index): the augmentation of a picture
    does not depend on which rank draws it, and a resumed run needs no state beyond the step.
    """

    def __init__(self, split: Split, per_picture, batch_pixels, batch_size: int, accum_steps: int, rank: int,
                 world: int, seed: int, workers: int, pin_memory: bool = False, trim_text: bool = False):
        self.split, self.workers = split, workers
        self.sampler = EpochBatches(len(split), batch_size, accum_steps, rank, world, seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.loader = train_loader(split, per_picture, batch_pixels, self.sampler, seed, workers, pin_memory,
                                   trim_text)

    @property
    def in_memory(self) -> bool:
        return self.split.store.in_memory

    @property
    def n_samples(self) -> int:
        return len(self.split)

    def describe(self) -> str:
        return f"{len(self.split)} training pictures ({len(self.split.captions)} captions)"

    def batches(self, epoch: int, start_step: int):
        self.sampler.set_epoch(epoch, start_step)
        return iter(self.loader)

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict, epoch: int) -> None:
        pass


def eval_loader(split: Split, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(EvalImages(split), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=EvalBatch(split.store.pictures))
