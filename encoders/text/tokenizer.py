"""open_clip's tokenizers without torch: the same tokens, as numpy int64.

- ``ClipTokenizer``: open_clip's BPE tokenizer (``SimpleTokenizer``) in plain Python;
- ``HubTokenizer``: open_clip's ``HFTokenizer`` (SigLIP's, SigLIP2's) without transformers: the Rust
  `tokenizers` package, which transformers itself runs, on the tokenizer file saved at export.

Why copies instead of open_clip's own: `import open_clip.tokenizer` imports torch and open_clip, which costs
several times a whole cold text query, while building these tokenizers costs a fraction of it (bench/query_bench.py;
see BENCHMARKS.md, "One query path"). The exporter checks that they reproduce the model's tokens before any
library uses them (export.py), and tests compare them on awkward texts.

Follows open_clip's ``tokenizer.py`` (itself from OpenAI's CLIP, MIT License, Copyright (c) 2021 OpenAI; its
``canonicalize_text`` from Google's big_vision, Apache-2.0).
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import itertools
import os
import string
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

# With the 256 bytes, the same 256 ending a word and 2 special tokens: open_clip's vocabulary of 49,408 tokens.
MERGES = 49152 - 256 - 2


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
    # ftfy is slow to import (see BENCHMARKS.md, "Figures behind choices in the code") and leaves printable
    # ASCII without '&' unchanged, so skip it there.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import ftfy

        text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _clean_whitespace(text: str) -> str:
    return " ".join(_basic_clean(text).split())


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    # big_vision's canonicalize_text: '_' as a space, ASCII punctuation removed, lower case, single spaces.
    text = _basic_clean(text).replace("_", " ").translate(_NO_PUNCTUATION).lower()
    return " ".join(text.split())


# open_clip's ``clean`` modes (its get_clean_fn), by name.
CLEANERS: dict[str, Callable[[str], str]] = {
    "whitespace": _clean_whitespace,
    "lower": lambda text: _clean_whitespace(text).lower(),
    "canonicalize": _canonicalize,
}


class ClipTokenizer:
    """open_clip's ``SimpleTokenizer`` with clean='lower' and truncation, returning numpy int64."""

    def __init__(self, context_length: int = 77, bpe_path: str | None = None):
        import regex

        self.context_length = context_length
        self.byte_encoder = _bytes_to_unicode()
        # Only the merges the vocabulary uses: the first fifth of the file, read as a stream (a cold query's
        # start-up; see BENCHMARKS.md, "Figures behind choices in the code").
        with gzip.open(bpe_path or default_bpe_path(), "rt", encoding="utf-8") as f:
            merges = [tuple(m.split()) for m in itertools.islice(f, 1, 1 + MERGES)]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        special = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(special)
        self.encoder = dict(zip(vocab, range(len(vocab)), strict=True))
        self.bpe_ranks = dict(zip(merges, range(len(merges)), strict=True))
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
        text = CLEANERS["lower"](text)
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


class HubTokenizer:
    """open_clip's ``HFTokenizer`` (not its 'clips' mode): ``clean`` the texts, then the Hugging Face fast
    tokenizer as transformers calls it there: special tokens added, truncated to ``context_length`` and padded to
    it; ``strip_sep_id``, when given, replaced by 0 (open_clip's ``strip_sep_token``).

    ``settings``: as the exporter records them (export.py reads them off the transformers tokenizer); ``path``:
    the Rust tokenizer's own file (tokenizer.json).
    """

    def __init__(self, path: str | os.PathLike, settings: dict):
        from tokenizers import Tokenizer

        self.clean = CLEANERS[settings["clean"]]
        self.strip_sep_id = settings["strip_sep_id"]
        self.context_length = int(settings["context_length"])
        self.tokenizer = Tokenizer.from_file(str(path))
        # What transformers sets on this same object for max_length padding and truncation=True
        # (PreTrainedTokenizerFast.set_truncation_and_padding).
        self.tokenizer.enable_truncation(self.context_length, stride=0, strategy="longest_first",
                                         direction=settings["truncation_side"])
        self.tokenizer.enable_padding(direction=settings["padding_side"], pad_id=settings["pad_id"],
                                      pad_type_id=settings["pad_type_id"], pad_token=settings["pad_token"],
                                      length=self.context_length)
        self.tokenizer.encode_special_tokens = settings["split_special_tokens"]

    def __call__(self, texts: list[str] | str) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encodings = self.tokenizer.encode_batch([self.clean(text) for text in texts], add_special_tokens=True)
        out = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), self.context_length)
        if self.strip_sep_id is not None:
            out[out == self.strip_sep_id] = 0
        return out


def text_tokenizer(settings: dict, hub_file: Path) -> Callable[[list[str]], np.ndarray]:
    """The tokenizer an export's ``settings`` describe (``kind``: 'clip' or 'hub'); ``hub_file``: where a hub
    tokenizer's file is."""
    if settings["kind"] == "clip":
        return ClipTokenizer(int(settings["context_length"]))
    return HubTokenizer(hub_file, settings)
