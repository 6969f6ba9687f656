"""The exported model: ``weights.safetensors`` + ``config.json`` + the tokenizer, loadable without pickle.

Loading reads tensors with safetensors and rebuilds the network from JSON, so a model file from
someone else cannot run code on this machine (``torch.load`` of a pickle could).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from seqlm.core.atomic import atomic_dir, atomic_path
from seqlm.core.errors import SeqlmError

FORMAT = "seqlm-model/1"
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
TOKENIZER = "spm.model"


def save_weights(model: torch.nn.Module, dest: Path) -> None:
    # save_model (not save_file) de-duplicates tied tensors instead of refusing them.
    with atomic_path(dest) as tmp:
        save_model(model, str(tmp))


def export(model: torch.nn.Module, weights: Path | None, dest: Path, spm_model: Path, info: dict) -> None:
    """Write the exported model directory atomically.

    ``weights`` is a safetensors file of the best weights (or None to save ``model`` as it is).
    ``info`` lands in config.json beside the network config (tokenizer facts, training summary).
    """
    with atomic_dir(dest) as tmp:
        if weights is not None:
            shutil.copyfile(weights, tmp / WEIGHTS)
        else:
            save_model(model, str(tmp / WEIGHTS))
        shutil.copyfile(spm_model, tmp / TOKENIZER)
        config = {"format": FORMAT, "model": model.config, **info}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def read_config(model_dir: Path) -> dict:
    model_dir = Path(model_dir)
    path = model_dir / CONFIG
    if not path.is_file() or not (model_dir / WEIGHTS).is_file():
        raise SeqlmError(
            f"{model_dir}: no exported model (config.json + weights.safetensors); run the train stage first"
        )
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise SeqlmError(f"{path}: not a seqlm model (format {config.get('format')!r}, expected {FORMAT!r})")
    return config


def load(model_dir: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    from seqlm.models.build import build_model_from_config

    config = read_config(model_dir)
    model = build_model_from_config(config["model"])
    missing, unexpected = load_model(model, str(Path(model_dir) / WEIGHTS), strict=False, device=str(device))
    if missing or unexpected:
        raise SeqlmError(
            f"{model_dir}: weights do not match config.json (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); re-export the model with the train stage"
        )
    return model.to(device).eval(), config
