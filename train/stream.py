"""WebDataset tar shards, streamed: corpora bigger than memory and than one machine.

Nothing is read up front: the number of samples comes from ``sizes.json`` (or ``__len__``)
beside the shards, as webdataset users write it, else rank 0 counts them from the tar headers
alone (no member is read). Each (rank, data-loader worker) pair is a *slot* with shards of its
own: every epoch the shard list is shuffled from (seed, epoch) and dealt round-robin to the
slots; a slot that runs out before the epoch ends starts a freshly dealt pass (webdataset's
``with_epoch`` behaviour). With fewer shards than slots, or ``--resampled``, each slot draws
shards with replacement instead (webdataset's ``ResampledShards``), the usual choice for long
multi-epoch runs over huge corpora. Samples are shuffled through a buffer within each pass.

Everything random (shard order, shuffle buffer, caption choice, crop) is seeded from (seed,
epoch, slot, position in the slot's stream), so a run resumed mid-epoch continues with exactly
the batches of the uninterrupted run: each slot skips what it had delivered (read, not decoded).
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .corpus import IMAGE_EXTS, TAR_CAPTION_EXTS, TAR_KEY, tar_captions
from .errors import TrainConfigError

SHUFFLE_BUFFER = 2000
SHUFFLE_INITIAL = 500


def _declared_size(folder: Path, shards: list[str]) -> int | None:
    """The sample count webdataset users write beside their shards: ``sizes.json`` or ``__len__``."""
    if (folder / "sizes.json").is_file():
        sizes = json.loads((folder / "sizes.json").read_text())
        if all(Path(s).name in sizes for s in shards):
            return sum(int(sizes[Path(s).name]) for s in shards)
    if (folder / "__len__").is_file() and {Path(s).name for s in shards} == {p.name for p in folder.glob("*.tar*")}:
        return int((folder / "__len__").read_text().strip())
    return None


def _counted_size(shard: str) -> int:
    """Keys with a picture and a caption file, from the tar headers only (no member is read)."""
    kinds: dict[str, set[str]] = {}
    with tarfile.open(shard, "r:*") as tar:
        for member in tar:
            match = TAR_KEY.match(member.name)
            if member.isfile() and match:
                kinds.setdefault(match.group(1), set()).add(match.group(2).lower())
    return sum(1 for exts in kinds.values()
               if any("." + e in IMAGE_EXTS for e in exts) and any(e in TAR_CAPTION_EXTS for e in exts))


def count_samples(shards: list[str]) -> int:
    by_folder: dict[Path, list[str]] = {}
    for shard in shards:
        by_folder.setdefault(Path(shard).parent, []).append(shard)
    total = 0
    for folder, group in by_folder.items():
        declared = _declared_size(folder, group)
        total += declared if declared is not None else sum(_counted_size(s) for s in group)
    return total


def mixed_seed(*parts: int) -> int:
    """One 64-bit seed from several integers (independent streams for each slot, epoch, position)."""
    import numpy as np

    return int(np.random.SeedSequence([p % (2 ** 63) for p in parts]).generate_state(2, np.uint64)[0])


def _report_broken(error: Exception) -> bool:
    print(f"warning: skipped unreadable tar data: {error}", file=sys.stderr, flush=True)
    return True


@dataclass
class EpochPlan:
    """What this rank's stream delivers in one epoch: micro-batches [start, total) and what each slot skips."""

    epoch: int = 0
    start: int = 0
    total: int = 0
    skip: tuple[int, ...] = ()


class ShardStream(IterableDataset):
    """One rank's micro-batches: ``(pixels, tokens, failed, slot, position)`` from its slots' shards.

    Micro-batch i of an epoch comes from slot ``i mod W`` (W = ``slots``, one per loader
    worker): the loader's round-robin over its workers keeps that order, and a loader started
    at micro-batch m0 gives worker p the slot ``(m0 + p) mod W``.
    """

    def __init__(self, shards: list[str], pictures, transform, tokenizer, batch_size: int, seed: int, rank: int,
                 world: int, slots: int, resampled: bool, caption_column: str = "caption", trim_text: bool = False):
        self.shards, self.pictures, self.transform, self.tokenizer = shards, pictures, transform, tokenizer
        self.batch_size, self.seed, self.rank, self.world, self.slots = batch_size, seed, rank, world, slots
        self.resampled = resampled or len(shards) < world * slots
        self.caption_column, self.trim_text = caption_column, trim_text
        self.plan = EpochPlan()

    # ---------------------------------------------------------------- which shards, in which order
    def slot_passes(self, slot: int, epoch: int):
        """The shard lists of a slot's successive passes in one epoch (one endless pass when resampled)."""
        if self.resampled:
            rng = random.Random(mixed_seed(self.seed, epoch, slot, 1))
            yield (rng.choice(self.shards) for _ in itertools.count())
            return
        n_slots = self.world * self.slots
        for pass_no in itertools.count():
            order = list(self.shards)
            random.Random(mixed_seed(self.seed, epoch, pass_no, 2)).shuffle(order)
            yield order[slot::n_slots]

    def slot_samples(self, slot: int, epoch: int):
        """(position, sample) of one slot: tar members grouped by key, shuffled through a buffer within each pass."""
        import webdataset as wds

        position = 0
        for pass_no, shards in enumerate(self.slot_passes(slot, epoch)):
            samples = wds.tariterators.tarfile_samples(({"url": url} for url in shards), handler=_report_broken)
            rng = random.Random(mixed_seed(self.seed, epoch, slot, pass_no, 3))
            pass_start = position
            for sample in wds.filters._shuffle(samples, SHUFFLE_BUFFER, SHUFFLE_INITIAL, rng=rng):
                yield position, sample
                position += 1
            if position == pass_start:  # a pass that yields nothing would yield nothing forever
                raise RuntimeError(f"no sample could be read from the shards {list(shards)[:3]}")

    # ---------------------------------------------------------------- one sample, one batch
    def pair(self, sample: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        from .data import seeded

        image_ext = next((k for k in sample if "." + k in IMAGE_EXTS), None)
        caption_ext = next((k for k in TAR_CAPTION_EXTS if k in sample), None)
        if image_ext is None or caption_ext is None:
            raise ValueError(f"sample {sample.get('__key__')} has no picture or no caption")
        captions, _ = tar_captions(sample[caption_ext], caption_ext, self.caption_column, None)
        captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
        if not captions:
            raise ValueError(f"sample {sample.get('__key__')} has an empty caption")
        rng = random.Random(seed)
        caption = captions[rng.randrange(len(captions))]
        pixels = seeded(seed, self.transform, self.pictures(sample[image_ext]))
        return pixels, self.tokenizer([caption])[0]

    def _collate(self, pairs: list, failed: int, slot: int, position: int):
        from .data import trim_tokens

        pixels, tokens = default_collate(pairs)
        return pixels, trim_tokens(tokens) if self.trim_text else tokens, torch.tensor(failed), slot, position

    def slot_batches(self, slot: int, count: int, skip: int):
        """``count`` micro-batches of a slot, after the ``skip`` samples it delivered before a resume."""
        if count <= 0:
            return
        epoch = self.plan.epoch
        pairs, failed, made = [], 0, 0
        for position, sample in self.slot_samples(self.rank * self.slots + slot, epoch):
            if position < skip:
                continue
            try:
                pairs.append(self.pair(sample, mixed_seed(self.seed, epoch, self.rank * self.slots + slot, position)))
            except Exception:  # an unreadable picture or caption: the next sample takes its place
                failed += 1
                continue
            if len(pairs) == self.batch_size:
                yield self._collate(pairs, failed, slot, position + 1)
                pairs, failed, made = [], 0, made + 1
                if made == count:
                    return

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        plan = self.plan
        slot = (plan.start + worker) % self.slots
        count = len(range(plan.start + worker, plan.total, self.slots))
        yield from self.slot_batches(slot, count, plan.skip[slot] if plan.skip else 0)


class StreamData:
    """Training batches streamed from tar shards; the loop's view of them (``RecordData``'s twin)."""

    in_memory = False

    def __init__(self, stream: ShardStream, n_samples: int, accum_steps: int, workers: int, pin_memory: bool):
        self.stream, self.accum, self.workers, self.pin_memory = stream, accum_steps, workers, pin_memory
        self.n_samples = n_samples
        global_batch = stream.batch_size * accum_steps * stream.world
        self.steps_per_epoch = n_samples // global_batch
        if self.steps_per_epoch < 1:
            raise TrainConfigError(f"the effective batch ({global_batch}) is larger than the training corpus "
                                   f"({n_samples} samples in {len(stream.shards)} shards); lower --batch-size")
        self.delivered = [0] * stream.slots  # samples each slot delivered this epoch (for an exact resume)
        self.resume_skip: tuple[int, ...] = ()
        self.resume_epoch = -1

    def describe(self) -> str:
        s = self.stream
        how = "resampled with replacement" if s.resampled else "split"
        return (f"{self.n_samples} training samples in {len(s.shards)} tar shards, streamed ({how} across "
                f"{s.world} process(es) × {s.slots} loader worker(s))")

    def batches(self, epoch: int, start_step: int):
        skip = self.resume_skip if epoch == self.resume_epoch else ()
        self.delivered = list(skip) if skip else [0] * self.stream.slots
        self.stream.plan = EpochPlan(epoch, start_step * self.accum, self.steps_per_epoch * self.accum, tuple(skip))
        kwargs = dict(prefetch_factor=4) if self.workers > 0 else {}
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory,
                            **kwargs)
        for pixels, tokens, failed, slot, position in loader:
            self.delivered[slot] = position
            yield pixels, tokens, failed

    def state(self) -> dict:
        return {"delivered": list(self.delivered), "slots": self.stream.slots}

    def load_state(self, state: dict, epoch: int) -> None:
        if state.get("slots", self.stream.slots) != self.stream.slots:
            raise TrainConfigError(f"the checkpoint streamed its shards through {state['slots']} loader worker(s) "
                                   f"per process, this run through {self.stream.slots}; resume with --workers "
                                   f"{state['slots']}")
        self.resume_skip, self.resume_epoch = tuple(state.get("delivered", ())), epoch
