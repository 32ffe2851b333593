"""Offline stand-ins for the Hugging Face hub: a cache snapshot as a download leaves it, and a tiny HF tokenizer."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(cache: Path, repo: str, missing: Iterable[str] = ()) -> Path:
    """The snapshot folder of ``repo`` in a hub cache, with ``refs/main`` pointing at it.

    ``missing``: files the hub answered "not found" for, recorded as the hub client records them
    (transformers asks a tokenizer repo for ``config.json`` before anything else).
    """
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / HUB_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(HUB_REVISION)
    for name in missing:
        marker = folder / ".no_exist" / HUB_REVISION / name
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return snapshot


def save_hf_tokenizer(folder: Path, words: Iterable[str], vocab_size: int) -> int:
    """A SigLIP-like tokenizer in Hugging Face's format: sentencepiece-style BPE, ``</s>`` appended, ``<pad>`` = 0.

    Trained on ``words`` (unknown ones fall back to characters, then ``<unk>``); returns its vocabulary size.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"))
    tokenizer.train_from_iterator([" ".join(words)], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(str(folder))
    return tokenizer.get_vocab_size()


def save_gemma_tokenizer(folder: Path, words: Iterable[str]) -> int:
    """A SigLIP2-like tokenizer (Gemma's shape, transformers' ``GemmaTokenizer``): BPE over '▁'-joined words with
    byte fallback (an unknown character becomes its UTF-8 bytes), ``<bos>`` and ``<eos>`` added, padded on the left
    (GemmaTokenizer's default). Returns its vocabulary size."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    special = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *(f"<0x{b:02X}>" for b in range(256))]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")  # as GemmaTokenizer's, so that merges span the '▁'
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous")
    tokenizer.train_from_iterator([" ".join(words)], trainers.BpeTrainer(vocab_size=400, special_tokens=special))
    model = json.loads(tokenizer.to_str())["model"]
    GemmaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], add_bos_token=True,
                   add_eos_token=True).save_pretrained(str(folder))
    return len(model["vocab"])
