"""Training checkpoints (atomic, resumable mid-epoch) and the final export in open_clip's hub format."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from encoders.files import atomic_write

CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "model"
KEEP_STEP_CHECKPOINTS = 2
_NAME = re.compile(r"^(step|epoch)_(\d+)\.pt$")


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output: Path, kind: str, step: int, payload: dict) -> Path:
    """``<output>/checkpoints/{step,epoch}_N.pt``, written to a temp file then renamed."""
    path = output / CHECKPOINT_DIR / f"{kind}_{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    steps = sorted(p for p in path.parent.glob("step_*.pt"))
    for old in steps[:-KEEP_STEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def find_latest(output: Path) -> Path | None:
    """The checkpoint with the highest step (an epoch-end one wins a tie: it saw the epoch through)."""
    found = []
    for p in (output / CHECKPOINT_DIR).glob("*.pt"):
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(2)), m.group(1) == "epoch", p))
    return max(found)[2] if found else None


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def preprocess_config(model: torch.nn.Module) -> dict:
    """Every field of open_clip's ``PreprocessCfg`` (size, mode, mean, std, interpolation, resize_mode, fill_color)."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    cfg = asdict(PreprocessCfg(**getattr(model.visual, "preprocess_cfg", {})))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def export_model(model: torch.nn.Module, model_cfg: dict, architecture: str, folder: Path,
                 extra: dict | None = None, tokenizer=None) -> Path:
    """open_clip's hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    Loadable with ``open_clip.create_model_and_transforms("local-dir:<folder>")`` and with
    ``encoders.load_encoder(ModelSpec.from_options(None, None, "<folder>"))``. A Hugging Face
    tokenizer is saved beside them: open_clip reads it from the folder (``local-dir:``).
    """
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_config(model),
              "clipsearch": {"architecture": architecture, **(extra or {})}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    atomic_write(folder / "open_clip_model.safetensors", lambda tmp: save_file(state, tmp))
    atomic_write(folder / "open_clip_config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return folder
