"""Model files: weights plus the configs that rebuild them, loaded without executing code."""

from __future__ import annotations

import io
import pickle
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import torch

from src.engine import TrainConfig
from src.errors import UserError
from src.files import atomic_path
from src.model import ModelConfig, Net


def save_checkpoint(path: str | Path, model: Net, train_cfg: TrainConfig, **meta: object) -> None:
    """Save weights, model and training configs and `meta` (plain values) to `path`, atomically; the same model
    and values give the same bytes."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    train = {k: v.value if isinstance(v, Enum) else v for k, v in asdict(train_cfg).items()}  # plain values only
    payload = {"model": model.cfg.to_dict(), "train": train, "state_dict": state, **meta}
    # Saved through a buffer: torch.save names the archive inside the file after the path it writes to, and the
    # temporary path is random, so saving to it directly would give different bytes for the same model.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | Path, stage: str = "the train stages") -> tuple[Net, dict]:
    """Rebuild the model saved at `path`; a clear error if the file is missing, corrupt or mismatched.

    `weights_only=True` means loading never runs code stored in the file.
    """
    path = Path(path)
    hint = f"run `dvc repro {stage}` to make it again"
    if not path.is_file():
        raise UserError(f"{path} not found; {stage} makes it", hint=hint)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ModelConfig(**ckpt["model"])
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} is not a valid model file ({type(e).__name__})", hint=hint) from None
    model = Net(cfg)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise UserError(f"{path}: weights do not match the architecture {cfg}", hint=hint) from None
    return model, ckpt
