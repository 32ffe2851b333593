"""Reading corpora into records: one record per picture, with all of its captions.

Formats: CSV/TSV with a header (paths relative to the file), JSONL, a folder of pictures
with ``.txt`` captions beside them, and WebDataset tar shards (brace patterns). Reading
lists pictures and captions only; pictures are decoded later (``images.py``).
"""

from __future__ import annotations

import csv
import json
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from encoders.images import picture_extensions

from .errors import TrainConfigError

IMAGE_EXTS = picture_extensions()  # the indexer's: a picture it can search, the trainer can learn from
TAR_CAPTION_EXTS = ("txt", "caption", "json")
TAR_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key.ext split


@dataclass(frozen=True)
class TarMember:
    shard: str
    offset: int
    size: int
    name: str


@dataclass
class Record:
    """One picture: where its bytes are, its captions (one or more) and optional label."""

    source: str | TarMember
    captions: list[str]
    label: str | None = None

    @property
    def name(self) -> str:
        return self.source.name if isinstance(self.source, TarMember) else Path(self.source).name


@dataclass
class Corpus:
    records: list[Record]
    skipped: Counter = field(default_factory=Counter)  # reason → count

    def pairs(self) -> list[tuple[str, str]]:
        return sorted((r.name, c) for r in self.records for c in r.captions)

    def extend(self, other: Corpus) -> None:
        self.records.extend(other.records)
        self.skipped.update(other.skipped)


def is_tar_pattern(spec: str) -> bool:
    return ".tar" in spec and ("{" in spec or spec.endswith(".tar") or spec.endswith(".tar.gz"))


def _merge(rows: list[tuple[str | TarMember, str, str | None]], skipped: Counter) -> Corpus:
    """(source, caption, label) rows → one record per picture, in first-seen order."""
    by_source: dict = {}
    for source, caption, label in rows:
        caption = (caption or "").strip()
        if not caption:
            skipped["empty caption"] += 1
            continue
        record = by_source.get(source)
        if record is None:
            by_source[source] = Record(source, [caption], label)
        elif caption not in record.captions:
            record.captions.append(caption)
    return Corpus(list(by_source.values()), skipped)


def read_table(path: Path, image_column: str, caption_column: str, label_column: str | None) -> Corpus:
    with path.open(newline="", encoding="utf-8-sig") as f:
        sample = f.read(8192)
        f.seek(0)
        if path.suffix.lower() in (".tsv", ".tab"):
            delimiter = "\t"
        elif path.suffix.lower() == ".csv":
            delimiter = ","
        else:
            try:
                delimiter = csv.Sniffer().sniff(sample, delimiters=",\t;|").delimiter
            except csv.Error:
                delimiter = ","
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        wanted = [image_column, caption_column] + ([label_column] if label_column else [])
        missing = [c for c in wanted if c not in columns]
        if missing:
            hint = " (use --image-column/--caption-column/--label-column)"
            raise TrainConfigError(f"{path}: no column {', '.join(repr(c) for c in missing)}; "
                                   f"its columns are {', '.join(columns) or 'none'}{hint}")
        base = path.parent
        rows = []
        skipped: Counter = Counter()
        for row in reader:
            image = (row.get(image_column) or "").strip()
            if not image:
                skipped["no image path"] += 1
                continue
            rows.append((str((base / image).resolve()) if not Path(image).is_absolute() else image,
                         row.get(caption_column), row.get(label_column) if label_column else None))
    return _merge(rows, skipped)


def read_jsonl(path: Path, image_column: str, caption_column: str, label_column: str | None) -> Corpus:
    rows = []
    skipped: Counter = Counter()
    base = path.parent
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrainConfigError(f"{path}:{line_no}: not JSON ({e.msg})") from e
            image = item.get(image_column, item.get("image"))
            captions = item.get(caption_column, item.get("caption", item.get("captions")))
            if not image:
                skipped["no image path"] += 1
                continue
            source = str((base / image).resolve()) if not Path(image).is_absolute() else image
            label = item.get(label_column) if label_column else None
            for caption in captions if isinstance(captions, list) else [captions]:
                rows.append((source, caption if isinstance(caption, str) else None,
                             None if label is None else str(label)))
    return _merge(rows, skipped)


def read_folder(root: Path) -> Corpus:
    rows = []
    skipped: Counter = Counter()
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()):
        if any(part.startswith(".") for part in image.relative_to(root).parts):
            continue
        text = image.with_suffix(".txt")
        if not text.is_file():
            skipped["no caption file"] += 1
            continue
        lines = [line.strip() for line in text.read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            skipped["empty caption"] += 1
        label = image.parent.name if image.parent != root else None
        rows.extend((str(image.resolve()), line, label) for line in lines)
    return _merge(rows, skipped)


def tar_captions(data: bytes, ext: str, caption_column: str, label_column: str | None):
    if ext != "json":
        lines = [line.strip() for line in data.decode("utf-8", errors="replace").splitlines()]
        return [line for line in lines if line], None
    item = json.loads(data)
    captions = item.get(caption_column, item.get("caption", item.get("text")))
    label = item.get(label_column) if label_column else None
    return (captions if isinstance(captions, list) else [captions]), (None if label is None else str(label))


def require_tar_packages() -> None:
    """Tar shards need webdataset (and braceexpand): said in one line where they are missing."""
    try:
        import braceexpand  # noqa: F401
        import webdataset  # noqa: F401
    except ImportError as e:
        raise TrainConfigError(f"tar shards need the webdataset and braceexpand packages ({e}); "
                               "pip install webdataset braceexpand") from None


def expand_shards(specs: list[str]) -> list[str]:
    """``shards/{000..099}.tar`` patterns (``::`` joins several) → existing shard paths."""
    require_tar_packages()
    from braceexpand import braceexpand

    shards = [str(Path(s).expanduser().resolve()) for spec in specs for p in spec.split("::") for s in braceexpand(p)]
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise TrainConfigError(f"{len(missing)} of {len(shards)} shards not found, e.g. {missing[0]}")
    return shards


def read_shards(pattern: str, caption_column: str, label_column: str | None) -> Corpus:
    """WebDataset shards listed (for evaluation): members grouped by key; pictures are read later by offset.

    Training streams shards instead (``stream.py``): a listing reads every header of every shard.
    """
    shards = expand_shards([pattern])
    rows = []
    skipped: Counter = Counter()
    for shard in shards:
        groups: dict[str, dict] = {}
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                match = TAR_KEY.match(member.name)
                if not member.isfile() or not match:
                    continue
                key, ext = match.group(1), match.group(2).lower()
                group = groups.setdefault(key, {})
                if "." + ext in IMAGE_EXTS:
                    group["image"] = TarMember(shard, member.offset_data, member.size,
                                               Path(key).name + "." + ext)
                elif ext in TAR_CAPTION_EXTS and "captions" not in group:
                    group["captions"] = tar_captions(tar.extractfile(member).read(), ext, caption_column,
                                                      label_column)
        for group in groups.values():
            if "image" not in group:
                continue
            if "captions" not in group:
                skipped["no caption file"] += 1
                continue
            captions, label = group["captions"]
            rows.extend((group["image"], c, label) for c in captions)
    return _merge(rows, skipped)


def read_corpus(specs: list[str], image_column: str = "filepath", caption_column: str = "caption",
                label_column: str | None = None) -> Corpus:
    """All ``--data`` arguments as one corpus (pictures listed in several files are merged)."""
    corpus = Corpus([])
    for spec in specs:
        path = Path(spec).expanduser()
        if is_tar_pattern(spec) and not path.is_dir():
            part = read_shards(str(path), caption_column, label_column)
        elif path.is_dir():
            part = read_folder(path)
        elif not path.exists():
            raise TrainConfigError(f"data not found: {spec}")
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            part = read_jsonl(path, image_column, caption_column, label_column)
        else:
            part = read_table(path, image_column, caption_column, label_column)
        if not part.records:
            detail = ", ".join(f"{n} {reason}" for reason, n in part.skipped.items())
            raise TrainConfigError(f"no (picture, caption) pairs in {spec}" + (f" ({detail})" if detail else ""))
        corpus.extend(part)
    if len(specs) > 1:
        corpus = _merge([(r.source, c, r.label) for r in corpus.records for c in r.captions], corpus.skipped)
    return corpus
