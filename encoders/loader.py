"""Build a ``ClipEncoder`` from a ``ModelSpec`` through open_clip's factory."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import open_clip
import torch

from .encoder import ClipEncoder, best_device
from .spec import HUB_PREFIX, RANDOM_INIT_SEED, ModelError, ModelFingerprint, ModelSpec, file_digest

CONFIG_DIR = Path(__file__).parent / "model_configs"
HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OFFLINE_HINT = ("Without network, use --checkpoint PATH (a folder written by `search train`, or a "
                "weights file with --model) or --pretrained none (random weights, for trying things out).")
# Random weights do not help here: the tokenizer is needed whatever the weights.
TOKENIZER_HINT = ("Without network, use --checkpoint PATH (a folder written by `search train`, which carries its "
                  "tokenizer), or run once with network so the Hugging Face cache holds it.")
LOCAL_DIR = "local-dir:"

open_clip.add_model_config(CONFIG_DIR)
log = logging.getLogger(__name__)


def hub_folder_architecture(folder: Path) -> str:
    """The architecture name a hub-format folder was exported from (``search train`` records it)."""
    config = json.loads((folder / HUB_CONFIG).read_text())
    return config.get("clipsearch", {}).get("architecture") or folder.name


def _weights_file(folder: Path) -> Path:
    for name in HUB_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise ModelError(f"{folder} has {HUB_CONFIG} but no weights file ({' or '.join(HUB_WEIGHTS)})")


def _check_known(spec: ModelSpec) -> None:
    if spec.is_hub and spec.model == spec.pretrained:
        return  # the repo's own architecture, read from its config when loading
    if spec.model not in open_clip.list_models():
        raise ModelError(f"unknown model {spec.model!r}; see open_clip.list_models() (e.g. ViT-B-32, RN50, "
                         "clipsearch-tiny)")
    if spec.checkpoint or spec.is_random or spec.is_hub:
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags:
        raise ModelError(f"no pretrained tag {spec.pretrained!r} for {spec.model}; known tags: "
                         f"{', '.join(tags) or 'none'} (or --pretrained none, or --checkpoint PATH)")


# Starting values, not architecture: a config that differs only in these builds the same network.
_INITIAL_VALUES = ("init_logit_scale", "init_logit_bias")


def _architecture(model_cfg: dict) -> dict:
    return {k: v for k, v in model_cfg.items() if k not in _INITIAL_VALUES}


def check_hub_architecture(model: str, hub_name: str) -> None:
    """A zoo name given with ``--pretrained hf-hub:...`` must be the repo's architecture (its config says)."""
    theirs = open_clip.get_model_config(hub_name)
    if theirs is None:
        raise ModelError(f"{hub_name} has no model_cfg in its open_clip_config.json")
    if _architecture(open_clip.get_model_config(model) or {}) != _architecture(theirs):
        raise ModelError(f"--model {model} is not the architecture of {hub_name}; leave --model out to use the "
                         "repo's own configuration and tokenizer")


def _forces_quick_gelu(model: str, pretrained: str | None) -> bool:
    """Weights trained with QuickGELU (OpenAI's; open_clip's tag says so) need it in a zoo name built with nn.GELU.

    open_clip only warns about the mismatch (ViT-B-32 with ``openai``); the vectors would be subtly wrong.
    """
    tag = open_clip.get_pretrained_cfg(model, pretrained) if pretrained else {}
    return bool(tag.get("quick_gelu")) and not (open_clip.get_model_config(model) or {}).get("quick_gelu")


def _config_as_built(name: str, pretrained: str | None) -> dict | None:
    config = open_clip.get_model_config(name)
    if config is None:
        return None
    return {**config, "quick_gelu": True} if _forces_quick_gelu(name, pretrained) else dict(config)


def model_config(name: str, pretrained: str | None = None) -> dict:
    """open_clip's model config for a zoo name, ``local-dir:FOLDER`` or ``hf-hub:ORG/REPO`` (from the hub's cache).

    With a pretrained tag, the config the model is built with for that tag (QuickGELU for OpenAI's weights),
    so that an export of it rebuilds the same network.
    """
    downloads = _downloads_if_online() if name.startswith(HUB_PREFIX) else contextlib.nullcontext()
    try:
        with downloads, _quiet_open_clip():
            config = _config_as_built(name, pretrained)
    except Exception as e:  # the hub client reports a missing download through many exception types
        raise ModelError(f"cannot read the configuration of {name}: {type(e).__name__}; {OFFLINE_HINT}") from e
    if config is None:
        raise ModelError(f"unknown model {name!r}; see open_clip.list_models() (e.g. ViT-B-32, RN50, clipsearch-tiny)")
    return config


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _downloads_if_online():
    """Offline, use the local cache only: the hub client would retry for most of a minute."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or not _hub_reachable()
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextlib.contextmanager
def _quiet_open_clip():
    # open_clip logs its own errors before raising; we raise one clear message instead.
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class _Source:
    """Where open_clip builds a spec's model from, and what identifies its weights."""

    name: str  # open_clip's name for config and tokenizer: a zoo name, local-dir:FOLDER or hf-hub:ORG/REPO
    architecture: str
    digest: str
    options: dict = field(default_factory=dict)  # for create_model_and_transforms
    downloads: bool = False  # a pretrained tag or a hub repo


def _source(spec: ModelSpec) -> _Source:
    if spec.checkpoint and Path(spec.checkpoint).is_dir():
        folder = Path(spec.checkpoint)
        if not (folder / HUB_CONFIG).is_file():
            raise ModelError(f"{folder} is not a model folder: it has no {HUB_CONFIG}")
        return _Source(f"{LOCAL_DIR}{folder}", hub_folder_architecture(folder), file_digest(_weights_file(folder)))
    _check_known(spec)
    if spec.checkpoint:
        return _Source(spec.model, spec.model, file_digest(spec.checkpoint),
                       {"pretrained": spec.checkpoint, "weights_only": True})
    if spec.is_random:
        return _Source(spec.model, spec.model, f"{spec.weights}:torch-{torch.__version__.split('+')[0]}")
    if spec.is_hub:
        # open_clip reads the repo's config: its architecture, preprocessing and tokenizer.
        return _Source(spec.pretrained, spec.model, spec.weights, downloads=True)
    if _forces_quick_gelu(spec.model, spec.pretrained):
        # A library filled before QuickGELU was applied holds other vectors: a new identity says so.
        return _Source(spec.model, spec.model, f"{spec.weights}+quick_gelu",
                       {"pretrained": spec.pretrained, "force_quick_gelu": True}, downloads=True)
    return _Source(spec.model, spec.model, spec.weights, {"pretrained": spec.pretrained}, downloads=True)


def _hub_text(name: str, config: dict) -> bool:
    """A text side whose tokenizer or tower open_clip fetches from the Hugging Face hub (SigLIP's tokenizers)."""
    text = config.get("text_cfg", {})
    local_tokenizer = name.startswith(LOCAL_DIR)  # open_clip reads a folder's tokenizer from the folder
    return bool(text.get("hf_model_name") or (text.get("hf_tokenizer_name") and not local_tokenizer))


def _needs_hub(source: _Source) -> bool:
    return source.downloads or _hub_text(source.name, open_clip.get_model_config(source.name) or {})


def _tokenizer(name: str, config: dict, model: str):
    """open_clip's tokenizer for ``name``; one that needs files from a hub fails offline as weights do, in one line."""
    try:
        return open_clip.get_tokenizer(name)
    except Exception as e:  # transformers and the hub client report a missing download through many types
        if not _hub_text(name, config):
            raise ModelError(f"cannot make the tokenizer of {model}: {sentence(e)}") from e
        where = config["text_cfg"].get("hf_tokenizer_name") or config["text_cfg"]["hf_model_name"]
        raise ModelError(f"cannot get the tokenizer {where} of {model}: {sentence(e)} {TOKENIZER_HINT}") from e


def load_tokenizer(name: str):
    """The tokenizer of a zoo name, ``local-dir:FOLDER`` or ``hf-hub:ORG/REPO``, without building the model."""
    config = model_config(name)
    with _downloads_if_online() if _hub_text(name, config) else contextlib.nullcontext(), _quiet_open_clip():
        return _tokenizer(name, config, name)


@dataclass
class _Built:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    config: dict  # open_clip's model config the network was built from


def _create(spec: ModelSpec, source: _Source, device: torch.device) -> _Built:
    with _downloads_if_online() if _needs_hub(source) else contextlib.nullcontext():
        config = _config_as_built(source.name, source.options.get("pretrained"))
        if config is None:
            raise ModelError(f"{source.name} has no model_cfg in its {HUB_CONFIG}")
        # First: a tokenizer that cannot be had fails before a long build.
        tokenizer = _tokenizer(source.name, config, spec.model or source.name)
        if spec.is_hub and spec.model != source.name:
            check_hub_architecture(spec.model, source.name)
        if spec.is_random:
            warnings.warn(f"RANDOM WEIGHTS: {spec.model} with --pretrained none gives meaningless rankings; "
                          "use it for tests and benchmarks only", stacklevel=3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # the same random model in every process (and no effect otherwise)
            model, _, preprocess = open_clip.create_model_and_transforms(source.name, device=device, **source.options)
    return _Built(model, preprocess, tokenizer, config)


def sentence(error: BaseException) -> str:
    """An underlying error as one whole line ending in a full stop: never cut mid-word."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def load_encoder(spec: ModelSpec, device: str | torch.device | None = None, for_training: bool = False) -> ClipEncoder:
    """The model in eval mode on the best device (CUDA if present), with its transform and tokenizer.

    ``for_training``: the model keeps the ``requires_grad`` of each parameter as its architecture
    built it (a fixed sin-cos position embedding, towers a config freezes stay frozen).
    """
    device = torch.device(device) if device is not None else best_device()
    try:
        with _quiet_open_clip():
            source = _source(spec)
            built = _create(spec, source, device)
    except ModelError:
        raise
    except pickle.UnpicklingError as e:
        raise ModelError(f"refused to load {spec.checkpoint}: it holds arbitrary Python objects, and only "
                         "tensors are ever unpickled; save a plain state_dict or safetensors") from e
    except Exception as e:  # open_clip reports download and format problems as many exception types
        reason = sentence(e)
        if spec.checkpoint:
            raise ModelError(f"cannot load checkpoint {spec.checkpoint}: {reason}") from e
        raise ModelError(f"cannot get weights {spec.weights} for {spec.model}: {reason} {OFFLINE_HINT}") from e
    model = built.model
    model.eval()
    if not for_training:
        model.requires_grad_(False)
    # The config's embed_dim is what both towers project to, whatever kind of tower each is.
    fingerprint = ModelFingerprint(architecture=source.architecture, weights=spec.weights, weights_digest=source.digest,
                                   embed_dim=int(built.config["embed_dim"]))
    return ClipEncoder(model=model, preprocess=built.preprocess, tokenizer=built.tokenizer, device=device, spec=spec,
                       fingerprint=fingerprint)
