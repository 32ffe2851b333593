"""How this machine runs a model's image tower: the fastest path that keeps its embeddings.

A path is a combination of steps on the image tower, each only where the tower can use it:

- ``reparam``: re-parameterised for inference (``timm.utils.reparameterize_model``: FastViT/MobileCLIP's
  RepMixer and MobileOne branches fused into single convolutions), for towers with such layers;
- ``cl``: channels-last memory format, for convolutional towers (a ViT's one patch convolution gains nothing);
- ``bf16``: bfloat16 autocast, offered only where the CPU computes it natively (AVX512-BF16 or AMX); elsewhere
  it is emulated and slower, and runs only when forced.

- ``onnx``: the tower exported beside the library and run by ONNX Runtime (``encoders.onnx.image``),
  re-parameterised where it can be; offered to `search index`, which has a library folder to export into. A
  library filled on it embeds its later pictures without importing torch: seconds less at every run's start, so
  it is chosen when it is as fast as the fastest PyTorch path (within MIN_GAIN), not only when faster.

``fp32-eager`` is the tower as built. A path is chosen by measurement, once per model and machine (cached in
$XDG_CACHE_HOME/clipsearch/inference.json), among the candidates whose embeddings of a fixed probe set keep
cosine >= 0.999 to fp32-eager's and the same top-10 neighbours, by CPU time per picture (a shared machine's wall
time of one batch says more about the other processes than about the path). A library records the path that filled
it and keeps it (a resumed run must end like an uninterrupted one), unless the user forces another one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write
from .inference_path import ALL_PATHS, AUTO, CUDA, EAGER, ONNX, InferencePath, check_forced_name
from .machine import bf16_cpu, cpu_flags, cpu_model
from .spec import INFERENCE_ENV, ModelError

MIN_COSINE = 0.999
TOP_K = 10
PROBES = 16  # fixed pictures every candidate embeds: 2 batches, the first one warms the path up, the second is timed
PROBE_BATCH = 8
# Neighbours whose fp32-eager scores differ by less than this are tied: their order is rounding noise (a random-weight
# MobileCLIP2 maps every input within 1e-6 of one direction), which no other path, nor fp32 on other thread counts,
# reproduces. Pretrained models spread their neighbours far wider.
TIE = 1e-5
PROBE_SEED = 1234
# A path other than fp32-eager must be this much faster to be chosen: timings on a shared machine wobble, and
# an equal-speed path buys nothing.
MIN_GAIN = 1.05
CACHE_VERSION = 2  # 2: CPU per picture decides (it was wall time)


def native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 itself (elsewhere oneDNN emulates it, slower than fp32). Asked of
    torch, which sees what oneDNN will use; the CPU's flags where this torch cannot say."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None for check in checks):
        return any(check() for check in checks if check is not None)
    return bf16_cpu()


def reparameterisable(visual: torch.nn.Module) -> bool:
    return any(hasattr(m, "fuse") or hasattr(m, "reparameterize") or hasattr(m, "switch_to_deploy")
               for m in visual.modules() if m is not visual)


def convolutional(visual: torch.nn.Module) -> bool:
    return sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules()) > 1


def candidates(visual: torch.nn.Module, bf16: bool | None = None) -> list[InferencePath]:
    """The paths worth measuring for this tower on this CPU (``bf16``: offer bf16; default: where native)."""
    bf16 = native_bf16() if bf16 is None else bf16
    can = {"reparam": reparameterisable(visual), "channels_last": convolutional(visual), "bf16": bf16}
    return [p for p in ALL_PATHS if all(can[step] or not getattr(p, step) for step in can)]


def probe_batch(image_size: tuple[int, int], count: int = PROBES) -> torch.Tensor:
    """Fixed, picture-like inputs (smooth random fields, normalised): the same in every process."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    coarse = torch.randn(count, 3, 8, 8, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=image_size, mode="bicubic", align_corners=False)


@torch.inference_mode()
def embed(visual: torch.nn.Module, path: InferencePath, batch: torch.Tensor) -> np.ndarray:
    """Unit vectors of ``batch`` through a tower prepared for ``path``, as ``encode_image(normalize=True)``."""
    with path.autocast():
        features = visual(path.input(batch))
    return torch.nn.functional.normalize(features.float(), dim=-1).numpy()


def top_k(vectors: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Each vector's k nearest others (itself left out), nearest first."""
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclass(frozen=True)
class Agreement:
    min_cosine: float
    same_top_k: bool

    @property
    def ok(self) -> bool:
        return self.min_cosine >= MIN_COSINE and self.same_top_k


def same_top_k(reference: np.ndarray, vectors: np.ndarray) -> bool:
    """Each probe's top-k neighbours among the others are the same, in the same order (ties within TIE aside):
    the neighbours ``vectors`` ranks first score as high, by fp32-eager's scores, as fp32-eager's own."""
    k = min(TOP_K, len(reference) - 1)
    scores = reference @ reference.T
    theirs = np.take_along_axis(scores, top_k(vectors, k), axis=1)
    ours = np.take_along_axis(scores, top_k(reference, k), axis=1)
    return bool(np.all(np.abs(theirs - ours) <= TIE))


def agreement(reference: np.ndarray, vectors: np.ndarray) -> Agreement:
    return Agreement(float(np.min(np.sum(reference * vectors, axis=1))), same_top_k(reference, vectors))


@dataclass(frozen=True)
class Trial:
    path: str
    images_per_second: float
    agreement: Agreement
    # The process's CPU time: what decides throughput when decode workers share the cores.
    cpu_ms_per_image: float | None = None

    @property
    def cost(self) -> float:
        """What the choice minimises: CPU per picture where measured (steady on a shared machine, where wall time
        of one batch is not), else wall time."""
        return self.cpu_ms_per_image if self.cpu_ms_per_image is not None else 1000 / self.images_per_second


def _timed(run, batch) -> tuple[np.ndarray, float, float]:
    """``run(batch)``'s vectors, wall seconds and the process's CPU seconds (every thread's)."""
    began, cpu = time.perf_counter(), time.process_time()
    vectors = run(batch)
    return vectors, time.perf_counter() - began, time.process_time() - cpu


def measure(visual: torch.nn.Module, image_size: tuple[int, int], paths: list[InferencePath],
            onnx=None) -> list[Trial]:
    """fp32-eager, then each path (and ``onnx``, an exported ``OnnxImageEncoder``, if given), on the probe set:
    speed (the batch after the first, which warms the path up) and agreement with fp32-eager's vectors.
    fp32-eager is timed once more at the end, best of both: the first tower measured in a process also pays the
    process's own warm-up."""
    probes = probe_batch(image_size)
    timed = len(probes) - PROBE_BATCH
    eager = InferencePath()
    # Each tower is prepared when it is measured and dropped after: one copy of it at a time.
    runs = [(path.name, lambda path=path: functools.partial(embed, path.tower(visual), path))
            for path in [eager, *[p for p in paths if p != eager]]]
    if onnx is not None:
        runs.append((ONNX, lambda: lambda batch: onnx.encode_images(batch.numpy())))
    reference, trials = None, []
    for name, prepare in runs:
        run = prepare()
        first = run(probes[:PROBE_BATCH])
        rest, seconds, cpu = _timed(run, probes[PROBE_BATCH:])
        vectors = np.concatenate([first, rest])
        reference = vectors if reference is None else reference
        trials.append(Trial(name, timed / seconds, agreement(reference, vectors), 1000 * cpu / timed))
        del run
    _, seconds, cpu = _timed(functools.partial(embed, visual, eager), probes[PROBE_BATCH:])
    first = trials[0]
    trials[0] = Trial(first.path, max(first.images_per_second, timed / seconds), first.agreement,
                      min(first.cpu_ms_per_image, 1000 * cpu / timed))
    return trials


def choose(trials: list[Trial], onnx: bool = True) -> str:
    """The cheapest PyTorch path that keeps the embeddings, when it beats fp32-eager by MIN_GAIN; ONNX (where
    ``onnx`` is offered) when it keeps them and comes within MIN_GAIN of that path's cost."""
    eager = trials[0]
    kept = [t for t in trials[1:] if t.agreement.ok and t.path != ONNX and t.cost * MIN_GAIN <= eager.cost]
    best = min(kept, key=lambda t: t.cost) if kept else eager
    exported = [t for t in trials if t.path == ONNX and t.agreement.ok]
    if onnx and exported and exported[0].cost <= best.cost * MIN_GAIN:
        return ONNX
    return best.path


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipsearch" / "inference.json"


def machine_key(fingerprint_id: str) -> str:
    """The model's identity with what decides its speed here: CPU model and flags, torch version, threads."""
    payload = [CACHE_VERSION, fingerprint_id, cpu_model(), sorted(cpu_flags()), torch.__version__,
               torch.get_num_threads()]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]


def read_cache(path: Path) -> dict:
    """A cache of measurements (this one, the trainer's), or {} when there is none or it is damaged."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measure again
        return {}
    return value if isinstance(value, dict) else {}


def _cached_trials(entry) -> list[Trial] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("images_per_second"), dict):
        return None
    speeds, kept = entry["images_per_second"], set(entry.get("kept", ()))
    cpu = entry.get("cpu_ms_per_image") if isinstance(entry.get("cpu_ms_per_image"), dict) else {}
    kept.add(EAGER)
    if EAGER not in speeds or not set(speeds) <= {p.name for p in ALL_PATHS} | {ONNX}:
        return None
    ordered = [EAGER, *[name for name in speeds if name != EAGER]]
    return [Trial(name, float(speeds[name]), Agreement(1.0 if name in kept else 0.0, name in kept),
                  float(cpu[name]) if name in cpu else None) for name in ordered]


def cached_choice(encoder, offer_onnx=None) -> str:
    """The path chosen for this model on this machine: from the cache, else measured now (a few seconds) and
    cached. ``offer_onnx``: gives the image tower exported beside the library (or None); called only when the
    cache has no ONNX measurement for this model, or chose ONNX."""
    path, key = cache_file(), machine_key(encoder.fingerprint.id)
    trials = _cached_trials(read_cache(path).get(key))
    onnx = None
    if trials is not None and offer_onnx is not None and (all(t.path != ONNX for t in trials)
                                                          or choose(trials) == ONNX):
        onnx = offer_onnx()
        if onnx is not None and all(t.path != ONNX for t in trials):
            trials = None  # measure again, with ONNX among the paths
    if trials is None:
        onnx = onnx if onnx is not None or offer_onnx is None else offer_onnx()
        trials = measure(encoder.model.visual, encoder.image_size, candidates(encoder.model.visual), onnx)
        _write_cache(path, key, encoder, trials)
    return choose(trials, onnx=onnx is not None)


def update_cache(path: Path, key: str, entry: dict) -> None:
    """Add one measurement to a cache file, keeping the entries other processes may have added meanwhile."""
    entries = read_cache(path)
    entries[key] = entry
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(entries, indent=1, sort_keys=True)))
    except OSError:  # a read-only home: the choice still holds for this run
        pass


def _write_cache(path: Path, key: str, encoder, trials: list[Trial]) -> None:
    update_cache(path, key, {
        "path": choose(trials), "architecture": encoder.fingerprint.architecture, "cpu": cpu_model(),
        "torch": torch.__version__, "images_per_second": {t.path: round(t.images_per_second, 2) for t in trials},
        "cpu_ms_per_image": {t.path: round(t.cpu_ms_per_image, 2) for t in trials if t.cpu_ms_per_image is not None},
        "kept": [t.path for t in trials if t.agreement.ok]})


def check_forced(encoder, name: str) -> str:
    """A path the user asked for: one this tower can take, whose embeddings stay within the bound."""
    path = InferencePath.parse(name)
    visual = encoder.model.visual
    offered = candidates(visual, bf16=True)
    if path not in offered:
        raise ModelError(f"inference path {name} does not apply to {encoder.fingerprint.architecture}; its paths: "
                         f"{', '.join(p.name for p in offered)}")
    if path != InferencePath():
        probes = probe_batch(encoder.image_size, PROBE_BATCH * 2)
        result = agreement(embed(visual, InferencePath(), probes), embed(path.tower(visual), path, probes))
        if not result.ok:
            raise ModelError(f"inference path {name} changes the embeddings of {encoder.fingerprint.architecture} "
                             f"beyond the bound (cosine {result.min_cosine:.5f}, needs {MIN_COSINE}, same top-"
                             f"{TOP_K}: {result.same_top_k}): use another path")
    return name


def settle(encoder, recorded: str | None, forced: str | None = None, offer_onnx=None) -> str:
    """The path a run takes: the forced one (``--inference`` or $CLIPSEARCH_INFERENCE), else the one the library
    recorded, else the cached or measured choice for this model and machine (ONNX among them where
    ``offer_onnx`` gives an exported tower)."""
    if encoder.device.type == "cuda":
        return CUDA
    forced = forced or os.environ.get(INFERENCE_ENV) or None
    if forced and forced != AUTO:
        return ONNX if forced == ONNX else check_forced(encoder, forced)
    if recorded and not forced and recorded != CUDA:
        return recorded
    return cached_choice(encoder, offer_onnx)


def _exported(encoder, folder: Path | None, strict: bool):
    """The image tower exported beside the library in ``folder`` (exported now if need be), or None where it
    cannot be (``strict``: a one-line ModelError saying why)."""
    from .onnx.export import ExportRefused
    from .onnx.image import OnnxImageEncoder, export_image_tower
    from .onnx.runtime import onnx_available
    from .onnx.sidecar import IMAGE, REFUSED, export_state, read_meta, record_refusal

    fingerprint = encoder.fingerprint
    if folder is None:  # no library to export into (a forced onnx was refused by `check_forced_name`)
        return None
    if not onnx_available(export=True):
        problem = "the onnx and onnxruntime packages are not installed"
    elif export_state(folder, fingerprint.id, IMAGE) == REFUSED:
        problem = read_meta(folder, fingerprint.id, IMAGE)["refused"]
    else:
        try:
            return OnnxImageEncoder.for_library(folder, fingerprint) or export_image_tower(encoder, folder)
        except ExportRefused as e:
            record_refusal(folder, fingerprint.id, str(e), IMAGE)
            problem = str(e)
        except (OSError, ImportError) as e:  # a full disk, or an `onnx` that cannot save
            problem = f"the export failed ({e})"
    if strict:
        raise ModelError(f"inference path {ONNX} is not available for {fingerprint.architecture}: {problem}")
    return None


def image_encoder(encoder, recorded: str | None, forced: str | None = None, folder: Path | None = None):
    """What a run embeds pictures with: ``encoder`` on its PyTorch path, or its image tower exported to ONNX
    beside the library in ``folder`` (``search index``; an ``OnnxImageEncoder``), as ``settle`` decides."""
    forced = forced or os.environ.get(INFERENCE_ENV) or None
    check_forced_name(forced, exports=folder is not None)
    exported = functools.cache(lambda: _exported(encoder, folder, strict=forced == ONNX))
    name = settle(encoder, recorded, forced, exported if folder is not None else None)
    if name == ONNX:
        onnx = exported()
        if onnx is not None:
            return onnx
        name = cached_choice(encoder)  # recorded, but the export is gone and cannot be made again here
    if folder is not None:
        from .onnx.sidecar import IMAGE, remove_towers

        remove_towers(folder, IMAGE)  # measured and not chosen, or left by an earlier run on ONNX
    encoder.use_inference(name)
    return encoder
