"""What the trainer builds: fixed parameters stay fixed, hub models bring their own architecture and
tokenizer (offline, from a hub cache), the optimizer follows the paper per family, the export carries
every preprocessing field, an unused SigLIP bias is frozen, TF32 only on CUDA."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli  # noqa: E402
from family_helpers import hub_snapshot  # noqa: E402
from train_helpers import make_shapes_corpus  # noqa: E402

HUB_REPO = "clipsearch-tests/tiny-shapes"


def _config(**kwargs):
    from train.config import TrainConfig

    return TrainConfig(**{**dict(progress=False, seed=0, batch_size=8), **kwargs})


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _fresh_tiny(**kwargs):
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)

    return open_clip.create_model("clipsearch-tiny", **kwargs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    make_shapes_corpus(root, per_class=1)
    return root / "captions.csv"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding one open_clip repo, written by our own export, as a download leaves it."""
    from train.checkpoint import export_model

    cache = tmp_path_factory.mktemp("hf") / "hub"
    torch.manual_seed(5)
    export_model(_fresh_tiny(), _tiny_cfg(), "clipsearch-tiny", hub_snapshot(cache, HUB_REPO))
    return cache


def _tiny_cfg() -> dict:
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny with open_clip)

    return open_clip.get_model_config("clipsearch-tiny")


@pytest.fixture()
def offline_hub(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


# ------------------------------------------------------------------ requires_grad as built


def test_fixed_parameters_stay_fixed(corpus, tmp_path):
    from safetensors.torch import load_file

    from train.loop import train
    from train.model import build_model

    fresh = _fresh_tiny()
    assert not fresh.visual.positional_embedding.requires_grad  # sin-cos, fixed by the architecture
    scratch = build_model(_config(data=[str(corpus)], output=str(tmp_path), model="clipsearch-tiny"),
                          torch.device("cpu"))
    assert _trainable(scratch.model) == _trainable(fresh)
    out = tmp_path / "run"
    train(_config(data=[str(corpus)], output=str(out), model="clipsearch-tiny", epochs=1))
    weights = load_file(out / "model" / "open_clip_model.safetensors")
    assert torch.equal(weights["visual.positional_embedding"], fresh.visual.positional_embedding)
    tuned = build_model(_config(data=[str(corpus)], output=str(tmp_path), checkpoint=str(out / "model")),
                        torch.device("cpu"))
    assert _trainable(tuned.model) == _trainable(fresh)


# ------------------------------------------------------------------ hf-hub models


def test_hub_model_brings_its_architecture_and_tokenizer(offline_hub, tmp_path):
    from encoders import ModelError, ModelSpec, load_encoder

    spec = ModelSpec.from_options(None, f"hf-hub:{HUB_REPO}", None)
    assert spec.model == f"hf-hub:{HUB_REPO}"
    encoder = load_encoder(spec, device="cpu")
    assert encoder.fingerprint.architecture == f"hf-hub:{HUB_REPO}"
    assert encoder.dim == 128 and encoder.tokenizer.context_length == 32  # the repo's, not ViT-B-32's 512 / 77
    folder = hub_snapshot(offline_hub, HUB_REPO)
    local = load_encoder(ModelSpec.from_options(None, None, str(folder)), device="cpu")
    assert torch.allclose(torch.from_numpy(encoder.encode_texts(["a red circle"])),
                          torch.from_numpy(local.encode_texts(["a red circle"])), atol=1e-6)
    matching = load_encoder(ModelSpec.from_options("clipsearch-tiny", f"hf-hub:{HUB_REPO}", None), device="cpu")
    assert matching.fingerprint.architecture == "clipsearch-tiny"
    with pytest.raises(ModelError, match="not the architecture of"):
        load_encoder(ModelSpec.from_options("ViT-B-32", f"hf-hub:{HUB_REPO}", None), device="cpu")
    assert ModelSpec.from_weights(spec.model, spec.weights) == spec


def test_training_from_a_hub_model_exports_its_config(offline_hub, corpus, tmp_path):
    import open_clip

    from train.errors import TrainConfigError
    from train.loop import train

    out = tmp_path / "tuned"
    train(_config(data=[str(corpus)], output=str(out), pretrained=f"hf-hub:{HUB_REPO}", max_steps=2))
    config = json.loads((out / "model" / "open_clip_config.json").read_text())
    assert config["model_cfg"] == _tiny_cfg()
    assert config["clipsearch"]["architecture"] == f"hf-hub:{HUB_REPO}"
    open_clip.create_model(f"local-dir:{out / 'model'}")  # config and weights agree
    with pytest.raises(TrainConfigError, match="not the architecture of"):
        train(_config(data=[str(corpus)], output=str(tmp_path / "wrong"), model="ViT-B-32",
                      pretrained=f"hf-hub:{HUB_REPO}", max_steps=1))


def test_index_with_a_hub_model_records_it(hub_cache, tmp_path):
    """`search index --pretrained hf-hub:...` as a user runs it, offline from the hub's cache."""
    from conftest import make_pictures

    make_pictures(tmp_path / "pictures", 3)
    env = {"HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    run_cli("index", str(tmp_path / "pictures"), "--library", str(tmp_path / "lib"), "--pretrained",
            f"hf-hub:{HUB_REPO}", env=env, check=True)
    status = run_cli("status", "--library", str(tmp_path / "lib"), "--json", env=env, check=True)
    model = json.loads(status.stdout)["model"]
    assert model["architecture"] == f"hf-hub:{HUB_REPO}" and model["embed_dim"] == 128


# ------------------------------------------------------------------ optimizer, export, bias, TF32


def test_adam_settings_follow_the_paper_per_family():
    from open_clip.modified_resnet import ModifiedResNet

    from train.optim import adam_settings, make_optimizer

    vit = _fresh_tiny()
    assert adam_settings(vit) == {"betas": (0.9, 0.98), "eps": 1e-6}
    resnet = torch.nn.Module()
    resnet.visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    assert adam_settings(resnet) == {"betas": (0.9, 0.999), "eps": 1e-8}
    group = make_optimizer(resnet, 1e-3, 0.1).param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8


def test_export_carries_every_preprocessing_field(tmp_path):
    from open_clip.transform import PreprocessCfg

    from train.checkpoint import export_model

    export_model(_fresh_tiny(), _tiny_cfg(), "clipsearch-tiny", tmp_path / "model")
    exported = json.loads((tmp_path / "model" / "open_clip_config.json").read_text())["preprocess_cfg"]
    assert set(exported) == set(asdict(PreprocessCfg()))
    assert exported["fill_color"] == 0 and exported["size"] == [64, 64]


def test_an_unused_siglip_bias_is_frozen(corpus, tmp_path):
    from train.checkpoint import export_model
    from train.model import build_model

    export_model(_fresh_tiny(init_logit_bias=-10.0), {**_tiny_cfg(), "init_logit_bias": -10.0}, "clipsearch-tiny",
                 tmp_path / "biased")
    common = dict(data=[str(corpus)], output=str(tmp_path), checkpoint=str(tmp_path / "biased"))
    assert not build_model(_config(**common, loss="clip"), torch.device("cpu")).model.logit_bias.requires_grad
    assert build_model(_config(**common, loss="siglip"), torch.device("cpu")).model.logit_bias.requires_grad


def test_the_loss_is_the_models_own_unless_asked(corpus, tmp_path):
    """No --loss: a model with a logit bias (SigLIP's family) fine-tunes with the sigmoid loss it was trained with,
    others with the softmax one; --loss decides where given; smoothing the sigmoid loss's targets is refused."""
    import time

    from open_clip.loss import SigLipLoss

    from train.checkpoint import export_model
    from train.distributed import Dist
    from train.errors import TrainConfigError
    from train.loop import Run
    from train.loss import SmoothedClipLoss

    export_model(_fresh_tiny(init_logit_bias=-10.0), {**_tiny_cfg(), "init_logit_bias": -10.0}, "clipsearch-tiny",
                 tmp_path / "biased")

    def set_up(name: str, **kwargs) -> Run:
        run = Run(_config(data=[str(corpus)], output=str(tmp_path / name), epochs=1, **kwargs), Dist(),
                  time.monotonic())
        run.setup()
        return run

    siglip = set_up("siglip", checkpoint=str(tmp_path / "biased"))
    assert siglip.cfg.loss == "siglip" and isinstance(siglip.loss_fn, SigLipLoss)
    assert siglip.model.logit_bias.requires_grad
    plain = set_up("plain", model="clipsearch-tiny")
    assert plain.cfg.loss == "clip" and isinstance(plain.loss_fn, SmoothedClipLoss)
    asked = set_up("asked", checkpoint=str(tmp_path / "biased"), loss="clip")
    assert asked.cfg.loss == "clip" and not asked.model.logit_bias.requires_grad
    with pytest.raises(TrainConfigError, match="--label-smoothing"):
        set_up("smoothed", checkpoint=str(tmp_path / "biased"), label_smoothing=0.1)


def test_tf32_only_on_cuda():
    """The flags are process settings, readable without a GPU; the CUDA path is chosen by the device alone."""
    from train.loop import enable_tf32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        enable_tf32(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32
        enable_tf32(torch.device("cuda"))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
