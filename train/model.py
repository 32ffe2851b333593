"""The model to train: any open_clip architecture, from scratch, a pretrained tag or a checkpoint."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import text_global_pool

from .config import TrainConfig
from .errors import TrainConfigError

SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = math.log(10), -10.0


class TrainingTowers(torch.nn.Module):
    """The training forward of an open_clip ``CLIP``: both towers, normalised, and the temperature.

    A text batch may come trimmed to its longest caption (``data.trim_tokens``): short captions
    then cost their own length, not the context length (emoji captions fill ≤ 12 of 32
    positions). Under the causal mask, positions after the end token never reach it, so
    the pooled features and their gradients are those of the full-length forward. Models
    whose text tower pools elsewhere, or is not open_clip's built-in one, get full tokens
    (``trims_text`` is false for them) and run their own forward. The wrapped model is
    ``module``, as in DDP, so one ``unwrap`` reaches it through both.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model
        self.trims_text = (isinstance(model, CLIP) and getattr(model, "attn_mask", None) is not None
                           and model.text_pool_type == "argmax")

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        m, n = self.module, text.shape[1]
        if not self.trims_text or n == m.positional_embedding.shape[0]:
            return m.encode_text(text, normalize=True)
        # open_clip's CLIP.encode_text, on the first n positions
        cast_dtype = m.transformer.get_cast_dtype()
        x = m.token_embedding(text).to(cast_dtype) + m.positional_embedding[:n].to(cast_dtype)
        x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask[:n, :n]))
        x = text_global_pool(x, text, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return F.normalize(x, dim=-1)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict:
        m = self.module
        return {"image_features": m.encode_image(images, normalize=True), "text_features": self.encode_text(texts),
                "logit_scale": m.logit_scale.exp(), "logit_bias": getattr(m, "logit_bias", None)}


@dataclass
class Built:
    model: torch.nn.Module
    train_transform: object
    preprocess: object
    tokenizer: object
    architecture: str
    model_cfg: dict
    image_size: int


def default_model(model: str | None, pretrained: str | None, checkpoint: str | None) -> tuple[str | None, str | None]:
    """The same defaults as indexing: the default model with its tag when nothing is named, the tiny one from
    scratch."""
    from encoders import ModelError, ModelSpec

    if checkpoint:
        return model, None
    try:
        spec = ModelSpec.from_options(model, pretrained, None)
    except ModelError as e:
        raise TrainConfigError(str(e)) from None
    return spec.model, spec.pretrained


def check_model_name(cfg: TrainConfig) -> None:
    """An unknown architecture is reported before the corpus is read or decoded."""
    import open_clip

    import encoders.loader  # noqa: F401  (registers the built-in architecture with open_clip)
    from encoders.spec import HUB_PREFIX

    if cfg.checkpoint and Path(cfg.checkpoint).is_dir():
        return
    if cfg.checkpoint and not cfg.model:
        raise TrainConfigError(f"--checkpoint {cfg.checkpoint} is a weights file: name its architecture with --model")
    if cfg.model.startswith(HUB_PREFIX):
        return  # the repo's config decides; a zoo --model given with it is compared when it loads
    if cfg.model not in open_clip.list_models():
        raise TrainConfigError(f"unknown model {cfg.model!r}; see open_clip.list_models() "
                               "(e.g. ViT-B-32, RN50, clipsearch-tiny)")


def _transforms(model: torch.nn.Module, crop_scale: float):
    """(training transform, the indexer's preprocess, its config); no random crop: the preprocess trains too."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**model.visual.preprocess_cfg)
    preprocess = image_transform_v2(cfg, is_train=False)
    if crop_scale >= 1.0:
        return preprocess, preprocess, cfg
    train = image_transform_v2(cfg, is_train=True, aug_cfg=open_clip.AugmentationCfg(scale=(crop_scale, 1.0)))
    return train, preprocess, cfg


def _image_size(cfg) -> int:
    return cfg.size if isinstance(cfg.size, int) else max(cfg.size)


def _source(cfg: TrainConfig) -> tuple[str, str]:
    """(open_clip's name to build from, the architecture recorded in the export)."""
    from encoders import HUB_CONFIG, hub_folder_architecture

    if cfg.checkpoint and Path(cfg.checkpoint).is_dir():
        folder = Path(cfg.checkpoint)
        if not (folder / HUB_CONFIG).is_file():
            raise TrainConfigError(f"{folder} is not a model folder: it has no {HUB_CONFIG}")
        return f"local-dir:{folder}", hub_folder_architecture(folder)
    if cfg.checkpoint and not Path(cfg.checkpoint).exists():
        raise TrainConfigError(f"checkpoint not found: {cfg.checkpoint}")
    if cfg.pretrained and cfg.pretrained.startswith("hf-hub:"):
        return cfg.pretrained, cfg.model  # the repo's own config; cfg.model is its name or a matching zoo name
    return cfg.model, cfg.model


def model_loss(cfg: TrainConfig) -> str:
    """The loss the model was made for: SigLIP's sigmoid loss for a model whose config has a logit bias (SigLIP,
    SigLIP 2, and what this trainer exports from them), CLIP's softmax loss otherwise. Fine-tuning a SigLIP model
    with the softmax loss leaves its bias unused and moves its scores away from what its threshold-free sigmoid
    was trained to give."""
    from encoders import ModelError, model_config

    name, _ = _source(cfg)
    try:
        return "siglip" if "init_logit_bias" in model_config(name, cfg.pretrained) else "clip"
    except ModelError as e:
        raise TrainConfigError(str(e)) from e


def _load(cfg: TrainConfig, name: str, device: torch.device):
    """(model, tokenizer) with each parameter's ``requires_grad`` as the architecture set it."""
    import open_clip

    from encoders import ModelError, ModelSpec, load_encoder, load_tokenizer

    if not cfg.from_weights:  # from scratch: the run's seed decides the initial weights
        try:
            tokenizer = load_tokenizer(name)
        except ModelError as e:
            raise TrainConfigError(str(e)) from e
        torch.manual_seed(cfg.seed)
        kwargs = dict(init_logit_scale=SIGLIP_INIT_SCALE, init_logit_bias=SIGLIP_INIT_BIAS) if cfg.loss == "siglip" \
            else {}
        if cfg.init_temperature is not None:
            kwargs["init_logit_scale"] = math.log(1 / cfg.init_temperature)
        logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": that is the point here
        try:
            model = open_clip.create_model(name, device=device, **kwargs)
        finally:
            logging.disable(logging.NOTSET)
        return model, tokenizer
    try:
        spec = ModelSpec.from_options(None if name.startswith("local-dir:") else cfg.model,
                                      cfg.pretrained if not cfg.checkpoint else None, cfg.checkpoint)
        encoder = load_encoder(spec, device=device, for_training=True)
    except ModelError as e:
        raise TrainConfigError(str(e)) from e
    return encoder.model, encoder.tokenizer


def build_model(cfg: TrainConfig, device: torch.device) -> Built:
    import encoders.loader  # noqa: F401  (registers the built-in architecture with open_clip)
    from encoders import ModelError, model_config

    name, architecture = _source(cfg)
    model, tokenizer = _load(cfg, name, device)
    try:
        model_cfg = model_config(name, cfg.pretrained)  # as built: QuickGELU for OpenAI's weights
    except ModelError as e:
        raise TrainConfigError(str(e)) from e
    if cfg.loss == "siglip" and getattr(model, "logit_bias", None) is None:
        model.logit_bias = torch.nn.Parameter(torch.full_like(model.logit_scale, SIGLIP_INIT_BIAS))
    if getattr(model, "logit_bias", None) is not None:
        model_cfg.setdefault("init_logit_bias", float(SIGLIP_INIT_BIAS))  # so the exported state dict loads
        if cfg.loss == "clip":
            # The softmax loss never uses the bias: frozen, it keeps its value and DDP finds no unused parameter.
            model.logit_bias.requires_grad_(False)
    model.train()
    train_transform, preprocess, pp_cfg = _transforms(model, cfg.crop_scale)
    return Built(model, train_transform, preprocess, tokenizer, architecture, model_cfg, _image_size(pp_cfg))


def apply_locks(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """LiT-style locking through open_clip's own lock_image_tower / lock_text_tower."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=True)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers)
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainConfigError("every parameter is locked: nothing to train")
