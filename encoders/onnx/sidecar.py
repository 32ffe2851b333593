"""Where a library's exported towers live, and whether they are there: ready, refused or missing.

Beside the library, one set per tower (``text`` or ``image``) and model fingerprint: ``<tower>.<fingerprint>.onnx``
(the graph), ``<tower>.<fingerprint>.weights`` (its weights, a file of their own), for a text tower whose model has
a Hugging Face tokenizer ``<tower>.<fingerprint>.tokenizer.json`` (that tokenizer's own file), and
``<tower>.<fingerprint>.json`` (what was exported, from which model, with which tokenizer settings, how close it
came to PyTorch). The JSON is written last, so a reader that finds it finds the rest; for a model whose tower
cannot be exported it records the refusal instead, so that later runs do not try again. Standard library only
(and ``encoders.files``, which is too): the query and index paths read it before deciding to import anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write

# 2: the weights in their own file beside the graph: ONNX Runtime loads them without parsing them out of the
# graph's protobuf, in a third of the CPU (see BENCHMARKS.md, "Figures behind choices in the code"). A sidecar
# of another version counts as missing: the next query that loads the PyTorch model exports again.
# 3: text towers of models with a Hugging Face tokenizer (SigLIP's) export too, their tokenizer beside them: a
# library whose version-2 export refused it tries again.
EXPORT_VERSION = 3
READY, REFUSED, MISSING = "ready", "refused", "missing"


@dataclass(frozen=True)
class TowerFiles:
    graph: Path
    weights: Path
    meta: Path
    tokenizer: Path  # a text tower's Hugging Face tokenizer, when its model has one (the sidecar says)

    def complete(self, meta: dict) -> bool:
        """Whether every file the sidecar ``meta`` needs is there."""
        hub_tokenizer = meta.get("tokenizer", {}).get("kind") == "hub"
        return all(p.is_file() for p in (self.graph, self.weights, *([self.tokenizer] if hub_tokenizer else ())))


TEXT, IMAGE = "text", "image"


def tower_files(folder: str | os.PathLike, fingerprint: str, tower: str = TEXT) -> TowerFiles:
    stem = Path(folder) / f"{tower}.{fingerprint}"
    return TowerFiles(stem.with_name(f"{stem.name}.onnx"), stem.with_name(f"{stem.name}.weights"),
                      stem.with_name(f"{stem.name}.json"), stem.with_name(f"{stem.name}.tokenizer.json"))


def read_meta(folder: str | os.PathLike, fingerprint: str, tower: str = TEXT) -> dict | None:
    """The sidecar of this model's export at this version, or None."""
    try:
        meta = json.loads(tower_files(folder, fingerprint, tower).meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != EXPORT_VERSION or meta.get("fingerprint") != fingerprint:
        return None
    return meta


def export_state(folder: str | os.PathLike, fingerprint: str, tower: str = TEXT) -> str:
    """READY, REFUSED (this model's tower stays on PyTorch: do not try again) or MISSING."""
    meta = read_meta(folder, fingerprint, tower)
    if meta is None:
        return MISSING
    if meta.get("refused"):
        return REFUSED
    return READY if tower_files(folder, fingerprint, tower).complete(meta) else MISSING


def record_refusal(folder: str | os.PathLike, fingerprint: str, reason: str, tower: str = TEXT) -> None:
    """Remember that this model's tower stays on PyTorch, so later runs do not retry the export."""
    write_meta(tower_files(folder, fingerprint, tower).meta, {"version": EXPORT_VERSION, "fingerprint": fingerprint,
                                                              "refused": reason})


def write_meta(path: Path, meta: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1)))


def remove_towers(folder: str | os.PathLike, tower: str, keep: str | None = None) -> None:
    """Exports of this tower for models other than ``keep`` (a re-index with another model), or all of them."""
    for old in Path(folder).glob(f"{tower}.*"):
        if keep is None or not old.name.startswith(f"{tower}.{keep}."):
            old.unlink(missing_ok=True)
