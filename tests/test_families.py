"""Every open_clip model family end to end, offline, with random weights.

One small config per family, in the family's own shape (tests/model_configs, registered here and
never shipped): CLIP ViT with OpenAI's QuickGELU; ConvNeXt (a timm tower under open_clip's text
tower); SigLIP (a timm ViT with attention pooling, a custom text tower, its Hugging Face tokenizer
from a hub cache, the logit bias and the sigmoid loss); MobileCLIP (FastViT with re-parameterisable
blocks, custom text tower); PE-Core (timm's Eva tower); and a SigLIP2-shaped ``hf-hub:`` repo.
Each goes load → index → query (CLI, text and picture; then the ONNX text path, without torch or
transformers) → fine-tune one step → export → ``local-dir:`` reload with the exported model's embeddings →
evaluate → re-index with the export.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli, run_cli_commands
from family_helpers import hub_snapshot, save_gemma_tokenizer, save_hf_tokenizer
from PIL import Image
from train_helpers import COLOURS, SHAPES, make_shapes_corpus

CONFIGS = Path(__file__).parent / "model_configs"
SIGLIP_TOKENIZER_REPO = "clipsearch-tests/siglip-tokenizer"  # named by family-siglip.json, as timm/... by SigLIP's
# A whole model repo, its tokenizer inside (family-siglip2.json): Gemma-shaped, as SigLIP2's real one is.
SIGLIP2_REPO = "clipsearch-tests/siglip2-tiny"
TEXTS = ["a red circle", "a picture of a blue square", "yellow cross", "an unknown word: zebra"]
QUERY = "a red circle"


@dataclass(frozen=True)
class Family:
    model: str  # a test config's name, or hf-hub:ORG/REPO
    loss: str = "clip"

    @property
    def is_hub(self) -> bool:
        return self.model.startswith("hf-hub:")


FAMILIES = [
    Family("family-vit-openai"),
    Family("family-convnext"),
    Family("family-siglip", loss="siglip"),
    Family("family-mobileclip"),
    # timm's smallest PE-Core tower runs at 384 px only: over a minute here.
    pytest.param(Family("family-pe-core"), marks=pytest.mark.slow),
    Family(f"hf-hub:{SIGLIP2_REPO}", loss="siglip"),
]


@pytest.fixture(scope="module", autouse=True)
def registered():
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny first)

    open_clip.add_model_config(CONFIGS)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, registered) -> Path:
    """A hub cache as downloads leave it: SigLIP's tokenizer repo, and a whole SigLIP2-shaped model repo."""
    import open_clip

    from train.checkpoint import export_model

    cache = tmp_path_factory.mktemp("hf") / "hub"
    words = [*COLOURS, *SHAPES, "a", "picture", "of", "photo"]
    vocab = save_hf_tokenizer(hub_snapshot(cache, SIGLIP_TOKENIZER_REPO, missing=["config.json"]), words, 100)
    assert vocab <= open_clip.get_model_config("family-siglip")["text_cfg"]["vocab_size"]
    vocab = save_gemma_tokenizer(hub_snapshot(cache, SIGLIP2_REPO, missing=["config.json"]), words)
    assert vocab <= open_clip.get_model_config("family-siglip2")["text_cfg"]["vocab_size"]
    torch.manual_seed(7)
    export_model(open_clip.create_model("family-siglip2"), open_clip.get_model_config("family-siglip2"),
                 "family-siglip2", hub_snapshot(cache, SIGLIP2_REPO))
    return cache


@pytest.fixture()
def offline(hub_cache, monkeypatch) -> dict:
    """This process and the CLI's read the hub cache above and never the network; returns the CLI's environment."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_corpus(root, per_class=1)
    return root


def _unit_rows(vectors: np.ndarray, n: int, dim: int) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (n, dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def _start(family: Family, tmp_path: Path):
    """(encoder, the training options naming it in any process): loaded by name, random weights.

    A test config is only registered in this process: its model goes to the CLI as an exported
    folder, which must give the same embeddings. A hub repo is read from the cache by name everywhere.
    """
    from encoders import ModelSpec, load_encoder, model_config
    from train.checkpoint import export_model

    spec = ModelSpec.from_options(None, family.model, None) if family.is_hub else \
        ModelSpec.from_options(family.model, "none", None)
    encoder = load_encoder(spec, device="cpu")
    assert encoder.dim == model_config(family.model)["embed_dim"]
    if family.is_hub:
        return encoder, {"pretrained": family.model}
    folder = export_model(encoder.model, model_config(family.model), family.model, tmp_path / "start",
                          tokenizer=encoder.tokenizer)
    exported = load_encoder(ModelSpec.from_options(None, None, str(folder)), device="cpu")
    assert exported.fingerprint.architecture == family.model
    np.testing.assert_allclose(exported.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-6)
    return exported, {"checkpoint": str(folder)}


def _results(completed: subprocess.CompletedProcess) -> dict[str, float]:
    return {r["path"]: r["score"] for r in json.loads(completed.stdout)["results"]}


def _assert_same_results(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    assert all(abs(got[path] - expected[path]) < 1e-4 for path in got), (got, expected)


def _query_without_torch(library: Path, env: dict) -> subprocess.CompletedProcess:
    code = ("import sys; sys.argv = ['search', 'query', sys.argv[2], '--json', '--top', '5', '--library', sys.argv[1]]"
            "\nfrom search.cli import app\ntry:\n    app()\nexcept SystemExit:\n    pass\n"
            "assert not {'torch', 'open_clip', 'transformers'} & set(sys.modules), 'torch or transformers imported'\n")
    return subprocess.run([sys.executable, "-c", code, str(library), QUERY], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, env={**os.environ, **env}, check=True)


def _fine_tune(start: dict, family: Family, corpus: Path, out: Path, monkeypatch) -> tuple[torch.nn.Module, object]:
    """One optimizer step as `search train` runs it; returns the model and tokenizer exactly as exported."""
    import train.loop
    from train.config import TrainConfig

    exported = {}
    export_model = train.loop.export_model

    def keep(model, *args, **kwargs):
        exported.update(model=model, tokenizer=kwargs["tokenizer"])
        return export_model(model, *args, **kwargs)

    monkeypatch.setattr(train.loop, "export_model", keep)
    summary = train.loop.train(TrainConfig(data=[str(corpus)], output=str(out), loss=family.loss, max_steps=1,
                                           epochs=1, batch_size=4, lr=1e-3, workers=0, progress=False, **start))
    assert summary["steps"] == 1
    return exported["model"].eval(), exported["tokenizer"]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.model.split("/")[-1])
def test_family_end_to_end(family, offline, shapes, tmp_path, monkeypatch):
    from encoders import ModelSpec, load_encoder
    from encoders.onnx.sidecar import export_state
    from indexer import IndexOptions, Library, index_folders
    from search import SearchEngine
    from search.reindex import reindex
    from train.eval import evaluate_checkpoint

    # load: the embedding size is the config's, whatever the towers are
    encoder, start = _start(family, tmp_path)
    pictures = [Image.open(p).convert("RGB") for p in sorted((shapes / "images").glob("*.png"))[:3]]
    _unit_rows(encoder.encode_images(pictures), 3, encoder.dim)
    _unit_rows(encoder.encode_texts(TEXTS), len(TEXTS), encoder.dim)

    # index through the real pipeline
    library = tmp_path / "lib"
    summary = index_folders(Library.open(library, create=True), encoder, [shapes / "images"], IndexOptions(workers=0))
    assert summary.added == summary.embedded == 16 and summary.failed == 0
    fingerprint = Library.open(library).model.fingerprint
    pytorch = SearchEngine(library, encoder=encoder, text_encoder=encoder)  # PyTorch's text tower, and no export
    expected = {r.path: r.score for r in pytorch.query(QUERY, top_k=5)}

    # query as a user does: text (PyTorch, then the ONNX export), then a picture (one process: each imports torch)
    original = shapes / "images" / "red_circle_000.png"
    outside = tmp_path / "query" / "copy.png"
    outside.parent.mkdir()
    shutil.copy(original, outside)
    answers = run_cli_commands(library, {"text": ["query", QUERY, "--json", "--top", "5"],
                                         "picture": ["query", "--image", str(outside), "--json", "--top", "1"]},
                               env=offline)
    first, by_picture = answers["text"], answers["picture"]
    assert first.returncode == by_picture.returncode == 0, (first.stderr, by_picture.stderr)
    _assert_same_results(_results(first), expected)
    assert export_state(library, fingerprint) == "ready"
    assert "start faster" in first.stderr
    [(path, score)] = _results(by_picture).items()
    assert path == str(original) and score > 0.999
    _assert_same_results(_results(_query_without_torch(library, offline)), expected)

    # fine-tune one step, export, reload: the reloaded model embeds as the exported one did
    model, tokenizer = _fine_tune(start, family, shapes / "captions.csv", tmp_path / "run", monkeypatch)
    folder = tmp_path / "run" / "model"
    tuned = load_encoder(ModelSpec.from_options(None, None, str(folder)), device="cpu")
    batch = torch.stack([tuned.image_tensor(p) for p in pictures])
    assert torch.equal(batch, torch.stack([encoder.image_tensor(p) for p in pictures]))  # same preprocessing
    with torch.no_grad():
        np.testing.assert_allclose(tuned.encode_images(batch), model.encode_image(batch, normalize=True).numpy(),
                                   atol=1e-6)
        np.testing.assert_allclose(tuned.encode_texts(TEXTS), model.encode_text(tokenizer(TEXTS), normalize=True)
                                   .numpy(), atol=1e-6)
    assert np.abs(tuned.encode_images(batch) - encoder.encode_images(batch)).max() > 1e-4  # the step moved it
    config = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    assert ("init_logit_bias" in config) == (family.loss == "siglip")

    # evaluate the export
    result = evaluate_checkpoint(str(folder), [str(shapes / "captions.csv")], "label")
    assert result["n_images"] == 16 and result["zero_shot"]["n_classes"] == 16
    assert all(0 <= result[k]["recall@10"] <= 1 for k in ("text_to_image", "image_to_text"))

    # re-index with the export: the library now answers in its space
    swapped = reindex(Library.open(library), tuned, IndexOptions(workers=0))
    assert swapped.pictures_before == swapped.pictures_after == 16
    assert Library.open(library).model.fingerprint == tuned.fingerprint.id
    [hit] = SearchEngine(library, encoder=tuned).query(image=outside, top_k=1)
    assert hit.path == str(original)


# ------------------------------------------------------------------ Hugging Face tokenizers without transformers

# Awkward texts for a tokenizer: case, punctuation and '_' (which 'canonicalize' removes), HTML entities, accents and
# other scripts (byte fallback), emoji, nothing, only spaces, special tokens' text, more tokens than the context.
TRICKY = ["a red circle", "A Picture of a BLUE square!!", "yellow_cross (4 cats, 12 dogs & 1 bird)?",
          "café &amp; crème brûlée", "日本語のテキスト 🐶", "", "   ", "red </s> <eos> <pad> blue",
          "a " * 40 + "very long caption", "  spaced\tout\nover lines  "]


@pytest.mark.parametrize("repo", [SIGLIP_TOKENIZER_REPO, SIGLIP2_REPO], ids=["siglip", "siglip2-gemma"])
def test_hub_tokenizer_gives_open_clips_tokens(repo, offline, tmp_path):
    """``HubTokenizer`` (no torch, no transformers) against open_clip's ``HFTokenizer``, set up as the exporter
    records it: the same ids for every cleaning, both padding sides, with and without ``strip_sep_token``."""
    from open_clip.tokenizer import HFTokenizer

    from encoders.text.export import tokenizer_settings
    from encoders.text.tokenizer import CLEANERS, HubTokenizer

    eos = "</s>" if repo == SIGLIP_TOKENIZER_REPO else "<eos>"
    for clean, side, strip in itertools.product(CLEANERS, ("left", "right"), (False, True)):
        tok = HFTokenizer(repo, context_length=16, clean=clean, strip_sep_token=strip, padding_side=side,
                          sep_token=eos)
        file = tmp_path / f"{clean}.{side}.{strip}.json"
        settings = tokenizer_settings(tok, file)
        assert settings["kind"] == "hub" and (settings["strip_sep_id"] is not None) == strip
        assert np.array_equal(HubTokenizer(file, settings)(TRICKY), tok(TRICKY).numpy()), (clean, side, strip)


def test_a_tokenizer_without_a_torch_free_twin_keeps_text_queries_in_pytorch(offline, shapes, tmp_path):
    """open_clip's 'clips' mode of a Hugging Face tokenizer (its own padding and class token) is not reproduced:
    the export is refused with a note, the refusal recorded, and text queries answer in PyTorch, never retrying."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    from encoders import ModelSpec, load_encoder
    from encoders.onnx.sidecar import export_state
    from indexer import IndexOptions, Library, index_folders
    from search import SearchEngine
    from train.checkpoint import export_model

    config = json.loads(json.dumps(open_clip.get_model_config("family-siglip2")))
    config["text_cfg"]["tokenizer_mode"] = "clips"
    tokenizer = HFTokenizer(SIGLIP2_REPO, cls_token="<mask>")  # 'clips' adds a class token
    folder = export_model(open_clip.create_model("family-siglip2", text_cfg=config["text_cfg"]), config,
                          "family-siglip2", tmp_path / "model", tokenizer=tokenizer)
    encoder = load_encoder(ModelSpec.from_options(None, None, str(folder)), device="cpu")
    library = tmp_path / "lib"
    index_folders(Library.open(library, create=True), encoder, [shapes / "images"], IndexOptions(workers=0))
    pytorch = SearchEngine(library, encoder=encoder, text_encoder=encoder)
    expected = {r.path: r.score for r in pytorch.query(QUERY, top_k=5)}

    L = ("--library", str(library))
    first = run_cli("query", QUERY, "--json", "--top", "5", *L, env=offline, check=True)
    _assert_same_results(_results(first), expected)
    assert "note: text queries on this library run in PyTorch: tokenizer mode 'clips'" in first.stderr
    assert export_state(library, Library.open(library).model.fingerprint) == "refused"
    again = run_cli("query", QUERY, "--json", "--top", "5", *L, env=offline, check=True)
    _assert_same_results(_results(again), expected)
    assert "note:" not in again.stderr  # the refusal is remembered, not retried


# ------------------------------------------------------------------ OpenAI's QuickGELU


def test_openai_weights_get_quick_gelu_through_training_and_export(shapes, tmp_path, monkeypatch):
    """A zoo name built with nn.GELU (ViT-B-32) takes QuickGELU for an OpenAI tag, as open_clip's tag says."""
    import open_clip
    from open_clip.pretrained import _pcfg
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    from encoders import ModelSpec, load_encoder, model_config
    from train.config import TrainConfig
    from train.loop import train

    def quick(model) -> bool:
        return any(isinstance(m, QuickGELU) for m in model.modules())

    weights = tmp_path / "weights.safetensors"
    torch.manual_seed(3)
    save_file({k: v.contiguous() for k, v in open_clip.create_model("clipsearch-tiny").state_dict().items()},
              str(weights))
    # Tags whose files are already here, as a download leaves them (open_clip's own tag entries).
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "clipsearch-tiny",
                        {"openai": _pcfg(file=str(weights), quick_gelu=True), "laion2b": _pcfg(file=str(weights))})
    openai = load_encoder(ModelSpec.from_options("clipsearch-tiny", "openai", None), device="cpu")
    laion = load_encoder(ModelSpec.from_options("clipsearch-tiny", "laion2b", None), device="cpu")
    assert quick(openai.model) and not quick(laion.model)
    assert not np.allclose(openai.encode_texts(TEXTS), laion.encode_texts(TEXTS), atol=1e-4)
    assert openai.fingerprint.id != laion.fingerprint.id
    assert model_config("clipsearch-tiny", "openai")["quick_gelu"] and "quick_gelu" not in model_config(
        "clipsearch-tiny", "laion2b")

    out = tmp_path / "run"
    train(TrainConfig(data=[str(shapes / "captions.csv")], output=str(out), model="clipsearch-tiny",
                      pretrained="openai", max_steps=1, epochs=1, batch_size=4, workers=0, progress=False))
    assert json.loads((out / "model" / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is True
    assert quick(load_encoder(ModelSpec.from_options(None, None, str(out / "model")), device="cpu").model)


# ------------------------------------------------------------------ tokenizers from a hub, offline


def test_hub_tokenizer_offline_fails_in_one_line(shapes, tmp_path, monkeypatch):
    """SigLIP's real tokenizer lives on the hub: offline with an empty cache, one line and exit 2, not a traceback."""
    from huggingface_hub import constants

    from train.config import TrainConfig
    from train.errors import TrainConfigError
    from train.model import build_model

    empty = tmp_path / "empty-cache"
    empty.mkdir()
    result = run_cli("index", str(shapes / "images"), "--library", str(tmp_path / "lib"), "--model",
                     "ViT-B-16-SigLIP", "--pretrained", "none",
                     env={"HF_HUB_CACHE": str(empty), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot get the tokenizer timm/ViT-B-16-SigLIP of ViT-B-16-SigLIP: ")
    assert "--checkpoint" in line and line.endswith(".")

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = TrainConfig(data=[str(shapes / "captions.csv")], output=str(tmp_path / "run"), model="ViT-B-16-SigLIP",
                      pretrained="none", loss="siglip")
    with pytest.raises(TrainConfigError, match="cannot get the tokenizer timm/ViT-B-16-SigLIP") as error:
        build_model(cfg, torch.device("cpu"))
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------ the real configs


@pytest.mark.parametrize("name", ["MobileCLIP2-S0", "PE-Core-T-16-384"])
def test_real_timm_tower_configs_load(name, tmp_path, monkeypatch):
    """Real configs whose towers have no text_projection or output_dim: the size is the config's.

    Offline with an empty hub cache: their tokenizer is open_clip's own, nothing comes from a hub.
    """
    import open_clip
    from huggingface_hub import constants
    from open_clip.tokenizer import SimpleTokenizer

    from encoders import ModelSpec, load_encoder

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    encoder = load_encoder(ModelSpec.from_options(name, "none", None), device="cpu")
    dim = open_clip.get_model_config(name)["embed_dim"]
    assert encoder.dim == encoder.fingerprint.embed_dim == dim and type(encoder.tokenizer) is SimpleTokenizer
    _unit_rows(encoder.encode_images([Image.new("RGB", (300, 200), (200, 30, 30))]), 1, dim)
    _unit_rows(encoder.encode_texts(TEXTS[:2]), 2, dim)
