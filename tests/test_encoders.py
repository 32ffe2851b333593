"""Model loading: specs, weights sources, fingerprints, refusals, offline behaviour."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, draw_picture
from safetensors.torch import save_file

import encoders.loader
from encoders import HUB_CONFIG, ModelError, ModelSpec, load_encoder, prepare_image
from encoders.loader import CONFIG_DIR

TINY_CFG = json.loads((CONFIG_DIR / "clipsearch-tiny.json").read_text())


def perturbed_state(encoder, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: (v + 0.05 * torch.randn(v.shape, generator=generator)).contiguous() if v.is_floating_point() else v
            for k, v in encoder.model.state_dict().items()}


def test_encodings_are_unit_float32_and_deterministic(tiny_encoder):
    pictures = [draw_picture(i) for i in range(3)]
    vectors = tiny_encoder.encode_images(pictures)
    assert vectors.dtype == np.float32 and vectors.shape == (3, tiny_encoder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    again = load_encoder(ModelSpec.from_options("clipsearch-tiny", "none", None))
    assert np.allclose(again.encode_images(pictures), vectors, atol=1e-6)
    assert again.fingerprint == tiny_encoder.fingerprint


def test_long_text_lists_are_batched(tiny_encoder):
    texts = [f"picture number {i}" for i in range(37)]
    batched = tiny_encoder.encode_texts(texts, batch_size=8)
    whole = tiny_encoder.encode_texts(texts)
    assert batched.shape == (37, tiny_encoder.dim) and np.allclose(batched, whole, atol=1e-5)


def test_transparency_is_composited_onto_white():
    from PIL import Image

    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert prepare_image(clear).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (4, 4), 0)
    palette.info["transparency"] = 0
    assert prepare_image(palette).getpixel((1, 1)) == (255, 255, 255)
    assert prepare_image(Image.new("LA", (2, 2), (10, 255))).getpixel((0, 0)) == (10, 10, 10)


def test_checkpoint_folder_in_hub_format_loads_alone(tmp_path, tiny_encoder):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / HUB_CONFIG).write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {},
                                                 "clipsearch": {"architecture": "clipsearch-tiny"}}))
    save_file(perturbed_state(tiny_encoder), folder / "open_clip_model.safetensors")
    encoder = load_encoder(ModelSpec.from_options(None, None, str(folder)))
    assert encoder.fingerprint.architecture == "clipsearch-tiny"
    assert encoder.fingerprint.weights_digest.startswith("sha256:")
    assert encoder.fingerprint.id != tiny_encoder.fingerprint.id
    picture = draw_picture(0)
    assert not np.allclose(encoder.encode_images([picture]), tiny_encoder.encode_images([picture]))


def test_weights_file_needs_its_architecture_and_loads_tensors_only(tmp_path, tiny_encoder):
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": perturbed_state(tiny_encoder)}, weights)
    with pytest.raises(ModelError, match="--model"):
        ModelSpec.from_options(None, None, str(weights))
    encoder = load_encoder(ModelSpec.from_options("clipsearch-tiny", None, str(weights)))
    assert encoder.fingerprint.weights == f"checkpoint:{weights}"


class Payload:
    """An arbitrary object: loading it would run code from the checkpoint."""

    def __reduce__(self):
        return (print, ("this would have run",))


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path, tiny_encoder):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": perturbed_state(tiny_encoder), "extra": Payload()}, evil)
    with pytest.raises(ModelError, match="refused"):
        load_encoder(ModelSpec.from_options("clipsearch-tiny", None, str(evil)))


def test_the_default_model_is_chosen_by_what_the_machine_computes_natively(monkeypatch):
    """SigLIP 2 where it is the cheaper of the two (bf16 in the CPU, or a GPU), CLIP ViT-B-32 elsewhere."""
    import encoders.machine as machine

    siglip2, clip = ModelSpec("ViT-B-32-SigLIP2-256", "webli"), ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
    for flags, gpu, expected in (({"avx2", "fma"}, False, clip), ({"avx2", "avx512f", "avx512_vnni"}, False, clip),
                                 ({"avx2", "avx512f", "avx512_bf16"}, False, siglip2),
                                 ({"avx2", "amx_tile", "amx_bf16"}, False, siglip2), ({"avx2"}, True, siglip2)):
        monkeypatch.setattr(machine, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(machine, "nvidia_gpu", lambda gpu=gpu: gpu)
        assert ModelSpec.from_options(None, None, None) == expected, (flags, gpu)
    # Either model named alone takes its default weights on any machine; another one must say which.
    assert ModelSpec.from_options("ViT-B-32-SigLIP2-256", None, None) == siglip2
    assert ModelSpec.from_options("ViT-B-32", None, None) == clip
    with pytest.raises(ModelError, match="needs weights"):
        ModelSpec.from_options("ViT-B-16", None, None)


def test_offline_models_fail_fast_with_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(encoders.loader, "_hub_reachable", lambda timeout=3.0: False)
    # SigLIP 2 (the default on CPUs with native bf16, named alone: its webli weights) needs its tokenizer from the
    # hub before any weights: random weights would not help.
    with pytest.raises(ModelError) as error:
        load_encoder(ModelSpec.from_options("ViT-B-32-SigLIP2-256", None, None))
    message = str(error.value)
    assert message.startswith("cannot get the tokenizer timm/ViT-B-32-SigLIP2-256") and "\n" not in message
    assert "--checkpoint" in message and "--pretrained none" not in message and message.endswith(".")
    # A CLIP model's tokenizer ships with open_clip: its weights are what is missing.
    with pytest.raises(ModelError) as error:
        load_encoder(ModelSpec.from_options("ViT-B-32", "laion2b_s34b_b79k", None))
    message = str(error.value)
    assert "--checkpoint" in message and "--pretrained none" in message and "\n" not in message
    # The underlying reason is kept whole (it was cut mid-word at 160 characters): every sentence ends.
    reason = message.split(": ", 1)[1].split(" Without network")[0]
    assert reason.endswith(".") and "Last error: " in reason and message.endswith(".")


def test_error_sentences_are_whole():
    from encoders.loader import sentence

    long = "x" * 300 + " word"
    assert sentence(RuntimeError(long)) == long + "."
    assert sentence(RuntimeError("two\n lines  here!")) == "two lines here!"
    assert sentence(KeyError()) == "KeyError."


def test_unknown_models_and_tags_are_named(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        load_encoder(ModelSpec(model="ViT-Nope", pretrained="none"))
    with pytest.raises(ModelError, match="known tags"):
        load_encoder(ModelSpec(model="ViT-B-32", pretrained="no-such-tag"))
    with pytest.raises(ModelError, match="not found"):
        ModelSpec.from_options(None, None, str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="either"):
        ModelSpec.from_options(None, "none", str(tmp_path))


def test_spec_round_trips_through_its_weights_string(tmp_path):
    for spec in (ModelSpec("ViT-B-32", "laion2b_s34b_b79k"), ModelSpec("clipsearch-tiny", "none"),
                 ModelSpec("ViT-B-32", "hf-hub:org/repo"), ModelSpec("", None, str(tmp_path))):
        assert ModelSpec.from_weights(spec.model, spec.weights) == spec


def test_the_papers_templates_are_open_clips_own():
    """Kept as plain strings (encoders/templates.py), so that `search query --ensemble` need not import open_clip."""
    import open_clip

    from encoders import PAPER_TEMPLATES, SHORT_TEMPLATES

    assert PAPER_TEMPLATES == tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    assert SHORT_TEMPLATES == tuple(t("{}") for t in open_clip.SIMPLE_IMAGENET_TEMPLATES)
    assert len(PAPER_TEMPLATES) == 80 and len(SHORT_TEMPLATES) == 7


def test_the_package_loads_torch_only_for_the_names_that_need_it():
    """`import encoders` is light (names load on first use); `encoders.loader` registers the built-in models."""
    light = ("import sys, encoders\n"
             "from encoders import PAPER_TEMPLATES, InputFileError, ModelSpec, TextEncoder, load_templates\n"
             "from encoders.text.onnx_runtime import OnnxTextEncoder\n"
             "from encoders.onnx.sidecar import export_state\n"
             "assert not {'torch', 'open_clip', 'transformers'} & set(sys.modules), 'torch or transformers imported'\n"
             "import encoders.loader, open_clip\n"
             "assert 'clipsearch-tiny' in open_clip.list_models()\n")
    result = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
