"""The text tower in ONNX Runtime: text queries in well under a second, without importing torch.

`import torch, open_clip` costs ~5 s on a small machine, more than the whole query budget.
So, once per library (the first `search query` that loads the model does it), the text
tower is exported to ONNX beside the library (``text.<fingerprint>.onnx`` plus a JSON
sidecar), checked against PyTorch (cosine ≥ 0.999 on probe texts), and later queries run
it with onnxruntime and a pure-Python copy of open_clip's BPE tokenizer (no torch).
Only models using open_clip's standard ``SimpleTokenizer`` are exported; any other
tokenizer keeps using the PyTorch path.

The tokenizer below follows open_clip's ``tokenizer.py`` (itself from OpenAI's CLIP, MIT
License, Copyright (c) 2021 OpenAI); tests check it gives the same tokens.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import importlib.util
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from userfiles import atomic_write

EXPORT_VERSION = 1
PROBE_TEXTS = ("a photo of a dog.", "golden retriever on a beach", "receipt", "Ünïcödé & emoji 🐶 test", "")
MIN_COSINE = 0.999


def sidecar_paths(folder: Path, fingerprint: str) -> tuple[Path, Path]:
    return folder / f"text.{fingerprint}.onnx", folder / f"text.{fingerprint}.json"


def onnx_available(export: bool = False) -> bool:
    """onnxruntime runs the tower; exporting it (torch.onnx) also needs the `onnx` package."""
    names = ("onnxruntime", "onnx") if export else ("onnxruntime",)
    return all(importlib.util.find_spec(name) is not None for name in names)


# -- tokenizer (no torch) ---------------------------------------------------------------------

def default_bpe_path() -> str:
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("open_clip is not installed: its BPE vocabulary is needed")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=False))


def _basic_clean(text: str) -> str:
    # ftfy costs ~0.2 s to import and leaves printable ASCII without '&' unchanged, so skip it there.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


class ClipTokenizer:
    """open_clip's ``SimpleTokenizer`` with clean='lower' and truncation, returning numpy int64."""

    def __init__(self, context_length: int = 77, bpe_path: str | None = None):
        import regex

        self.context_length = context_length
        self.byte_encoder = _bytes_to_unicode()
        merges = gzip.open(bpe_path or default_bpe_path()).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1:49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special)
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in special}
        self.pat = regex.compile("|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)
        self.sot, self.eot = self.encoder[special[0]], self.encoder[special[1]]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:], strict=False))
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:], strict=False))
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        text = " ".join(_basic_clean(text).split()).strip().lower()
        tokens: list[int] = []
        for piece in self.pat.findall(text):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            tokens.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return tokens

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot]
            if len(tokens) > self.context_length:
                tokens = tokens[:self.context_length]
                tokens[-1] = self.eot
            out[row, :len(tokens)] = tokens
        return out


# -- running the exported tower (no torch) ---------------------------------------------------

class OnnxTextEncoder:
    """Texts → unit vectors with the exported text tower; same interface as ``ClipEncoder.encode_texts``."""

    def __init__(self, model_path: Path, meta: dict):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Graph optimisation costs ~1 s at every load of a ViT-B-32 tower and saves nothing measurable
        # on one short query (measured: load 2.4 s → 1.4 s, run 0.30 s → 0.31 s, on a busy 2-core machine).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        from .fastpath import busy

        options.intra_op_num_threads = 1 if busy() else min(4, os.cpu_count() or 1)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.meta = meta
        self.dim = int(meta["embed_dim"])
        self.tokenizer = ClipTokenizer(int(meta["context_length"]))

    @classmethod
    def for_library(cls, folder: Path, fingerprint: str) -> OnnxTextEncoder | None:
        """The library's exported tower, or None when there is none (or it does not fit this model)."""
        model_path, meta_path = sidecar_paths(folder, fingerprint)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if (meta.get("version") != EXPORT_VERSION or meta.get("fingerprint") != fingerprint or meta.get("refused")
                or not model_path.is_file()):
            return None
        return cls(model_path, meta)

    def encode_texts(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(texts[start:start + batch_size])
            features = self.session.run(None, {"tokens": tokens})[0].astype(np.float32)
            # The graph already normalises; this only removes float noise.
            out[start:start + len(tokens)] = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
        return out


# -- exporting (needs torch; called from the PyTorch path) -----------------------------------

class ExportRefused(Exception):
    """This model's text side cannot be served by the ONNX path; queries keep using PyTorch."""


def _tokenizer_settings(encoder) -> int:
    """The context length, if the encoder's tokenizer is exactly what ``ClipTokenizer`` reproduces."""
    from open_clip.tokenizer import SimpleTokenizer

    tok = encoder.tokenizer
    if type(tok) is not SimpleTokenizer:
        raise ExportRefused(f"tokenizer {type(tok).__name__} is not open_clip's SimpleTokenizer")
    if getattr(tok, "reduction_fn", None) is not None or getattr(tok.clean_fn, "__name__", "") != "_clean_lower":
        raise ExportRefused("tokenizer uses a non-default cleaning or reduction")
    if tok.vocab_size != 49408:
        raise ExportRefused("tokenizer has extra special tokens")
    return int(tok.context_length)


@contextlib.contextmanager
def _unfused_attention():
    """nn.MultiheadAttention's fused inference kernel has no ONNX export; the plain path computes the same.

    PyTorch takes the fused kernel when there is no attention mask, as in the text towers of
    MobileCLIP and SigLIP (no causal mask).
    """
    import torch

    saved = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(saved)


def export_text_tower(encoder, folder: str | os.PathLike) -> Path:
    """Export ``encoder``'s text tower beside the library, verify it, and return the ONNX file.

    Written to temp files and renamed; the JSON sidecar goes last, so a reader never sees a
    half-written model. Raises ``ExportRefused`` when the ONNX path cannot match PyTorch.
    """
    import torch

    folder = Path(folder)
    fingerprint = encoder.fingerprint.id
    model_path, meta_path = sidecar_paths(folder, fingerprint)
    context_length = _tokenizer_settings(encoder)
    tokenizer = ClipTokenizer(context_length)
    probes = list(PROBE_TEXTS)
    reference_tokens = encoder.tokenizer(probes).numpy()
    if not np.array_equal(tokenizer(probes), reference_tokens):
        raise ExportRefused("the pure-Python tokenizer does not reproduce this model's tokens")

    class TextTower(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, tokens):
            return self.model.encode_text(tokens, normalize=True)

    from encoders import PAPER_TEMPLATES

    model = encoder.model
    device = next(model.parameters()).device
    meta = {"version": EXPORT_VERSION, "fingerprint": fingerprint, "architecture": encoder.fingerprint.architecture,
            "weights": encoder.fingerprint.weights, "embed_dim": encoder.dim, "context_length": context_length,
            "torch": torch.__version__, "templates": list(PAPER_TEMPLATES)}

    def export(tmp: str) -> None:
        example = torch.from_numpy(reference_tokens[:2]).to(device)
        with warnings.catch_warnings(), torch.no_grad(), _unfused_attention():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(TextTower(model).eval(), (example,), tmp, input_names=["tokens"],
                                  output_names=["embedding"],
                                  dynamic_axes={"tokens": {0: "batch"}, "embedding": {0: "batch"}},
                                  opset_version=17, dynamo=False)
            except Exception as e:  # an operator ONNX has no export for, or a tower the tracer cannot follow
                raise ExportRefused(f"the text tower does not export to ONNX ({type(e).__name__})") from e
        onnx_vectors = OnnxTextEncoder(Path(tmp), meta).encode_texts(probes)
        torch_vectors = encoder.encode_texts(probes)
        cosine = float((onnx_vectors * torch_vectors).sum(axis=1).min())
        if cosine < MIN_COSINE:
            raise ExportRefused(f"ONNX text vectors differ from PyTorch (cosine {cosine:.5f} < {MIN_COSINE})")
        meta["probe_min_cosine"] = cosine

    atomic_write(model_path, export)  # verified before it replaces anything
    _write_json(meta_path, meta)
    for old in folder.glob("text.*.onnx"):  # towers of models this library no longer uses
        if old != model_path:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
    return model_path


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1)))


def export_state(folder: str | os.PathLike, fingerprint: str) -> str:
    """"ready", "refused" (this model cannot use the ONNX path; do not try again) or "missing"."""
    model_path, meta_path = sidecar_paths(Path(folder), fingerprint)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "missing"
    if meta.get("version") != EXPORT_VERSION or meta.get("fingerprint") != fingerprint:
        return "missing"
    if meta.get("refused"):
        return "refused"
    return "ready" if model_path.is_file() else "missing"


def record_refusal(folder: str | os.PathLike, fingerprint: str, reason: str) -> None:
    """Remember that this model's text tower stays on PyTorch, so queries do not retry the export."""
    _write_json(sidecar_paths(Path(folder), fingerprint)[1],
                {"version": EXPORT_VERSION, "fingerprint": fingerprint, "refused": reason})
