"""Model files: weights plus the configs that rebuild them, loaded without executing code."""

from __future__ import annotations

import io
from dataclasses import asdict
from enum import Enum
from pathlib import Path

import torch

from src.engine import TrainConfig
from src.files import Corrupt, atomic_path, read_input
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


def load_checkpoint(path: str | Path, stage: str | None = None) -> tuple[Net, dict]:
    """Rebuild the model saved at `path`; an error naming the file and `stage` (the stage that makes it, by default
    `train_<file name>`) if the file is missing, damaged or holds weights of another architecture.

    `weights_only=True` means loading never runs code stored in the file.
    """
    path = Path(path)
    return read_input(path, stage or f"train_{path.stem}", _rebuild)


def _rebuild(path: Path) -> tuple[Net, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a cut or foreign file as OSError, RuntimeError, UnpicklingError, ...
        raise Corrupt("not a complete PyTorch model file") from e
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), dict) for k in ("model", "train", "state_dict")):
        raise Corrupt("it holds no model, training config and weights")
    model = Net(ModelConfig(**ckpt["model"]))
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise Corrupt(f"weights do not match the architecture {model.cfg}") from None
    return model, ckpt
