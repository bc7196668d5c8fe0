"""Model files: weights plus the configs that rebuild them, loaded without executing code."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from pydantic import ValidationError

from src.config import Loader, ModelConfig, TrainConfig
from src.errors import UserError
from src.files import Corrupt, atomic_path, input_error, read_input
from src.model import Net


def save_checkpoint(path: str | Path, model: Net, train_cfg: TrainConfig, **meta: object) -> None:
    """Save weights, model and training configs and `meta` (plain values) to `path`, atomically; the same model
    and values give the same bytes."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"model": model.cfg.model_dump(), "train": train_cfg.model_dump(), "state_dict": state, **meta}
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
    stage = stage or f"train_{path.stem}"
    return read_input(path, stage, lambda p: _rebuild(p, stage))


def _rebuild(path: Path, stage: str) -> tuple[Net, dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch reports a cut or foreign file as OSError, RuntimeError, UnpicklingError, ...
        foreign = _foreign_objects(path)
        if foreign:
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            named = f"code or classes: {', '.join(foreign[:3])}{more}"
            problem = f"holds objects other than weights ({named}) and was not loaded"
            raise input_error(path, stage, problem) from None
        raise Corrupt("not a complete PyTorch model file") from e
    if not isinstance(ckpt, dict) or not all(isinstance(ckpt.get(k), dict) for k in ("model", "train", "state_dict")):
        raise Corrupt("it holds no model, training config and weights")
    try:
        model = Net(ModelConfig.model_validate(ckpt["model"]))
    except ValidationError as e:
        problem = e.errors(include_url=False)[0]
        raise Corrupt(f"its model config is not one this code builds ({problem['loc']}: {problem['msg']})") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise Corrupt(f"weights do not match the architecture {model.cfg}") from None
    return model, ckpt


def _foreign_objects(path: Path) -> list[str]:
    """The functions and classes a model file would need beyond weights (code that loading would run): read from
    the file's pickle, not from an error message; none for a file that is no complete PyTorch archive."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a cut or foreign file: not an archive whose objects can be listed
        return []


def file_md5(path: str | Path) -> str:
    """The md5 of a file, as DVC records it: what a model file keeps of the dataset it was trained on."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_models(folder: Path, variants: Mapping, data: Path) -> tuple[dict[str, tuple[Net, dict]], int]:
    """Each variant's model from `folder` (`<variant>.pt`) and the validation split they were trained with; an error
    if a file holds another norm than params.yaml's variant, was trained on other data than `data`, or if the
    models were trained on different splits or loaders."""
    now = file_md5(data) if data.is_file() else None
    loaded = {}
    for v, spec in variants.items():
        path = folder / f"{v}.pt"
        model, ckpt = load_checkpoint(path, stage=f"train_{v}")
        if model.cfg.norm != spec.norm:
            raise UserError(f"{path} holds a {model.cfg.norm} model but params.yaml says variants.{v}.norm "
                            f"is {spec.norm}", hint=f"run `dvc repro train_{v}`")
        trained_on = ckpt.get("data_md5")
        if now is not None and trained_on != now:
            was = f"md5 {trained_on[:8]}…" if isinstance(trained_on, str) else "no record of it"
            raise UserError(f"{path} was trained on other data than {data} ({was}; {data} now: md5 {now[:8]}…)",
                            hint=f"run `dvc repro` to retrain it on this data, or restore the data it was trained "
                                 f"on (`dvc checkout {data}`)")
        loaded[v] = model, ckpt
    for key, default, what in (("validation", 0, "validation splits"), ("loader", Loader.tensors.value, "loaders")):
        values = {v: ckpt["train"].get(key, default) for v, (_, ckpt) in loaded.items()}
        if len(set(values.values())) > 1:
            raise UserError(f"the models were trained on different {what} {values}",
                            hint=f"run `dvc repro` to retrain them with the same train.{key}")
    return loaded, next((ckpt["train"].get("validation", 0) for _, ckpt in loaded.values()), 0)


def trained_loader(ckpt: Mapping) -> Loader:
    """The `train.loader` a model file was trained with (its input standardization: `loader.input_stats`)."""
    return Loader(ckpt["train"].get("loader", Loader.tensors.value))
