"""src/checkpoint.py: a model file rebuilds the model exactly, holds plain values only, and is byte-reproducible."""

from __future__ import annotations

import hashlib

import pytest
import torch

from src.checkpoint import load_checkpoint, save_checkpoint
from src.engine import TrainConfig, make_model
from src.errors import UserError
from src.model import ModelConfig


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_round_trip_rebuilds_the_same_model(tmp_path, norm):
    model = make_model(ModelConfig(norm=norm, gn_groups=2), seed=3)
    if norm == "bn":  # running statistics are part of what must come back
        model.train()(torch.randn(8, 1, 28, 28))
    save_checkpoint(tmp_path / "m.pt", model, TrainConfig(epochs=2, l1=1e-4 if norm == "bn" else 0.0), variant="v")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == model.cfg
    assert ckpt["train"]["epochs"] == 2 and ckpt["train"]["precision"] == "exact" and ckpt["variant"] == "v"
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_the_same_model_gives_the_same_bytes_wherever_it_is_saved(tmp_path):
    model = make_model(ModelConfig(norm="gn"), seed=1)
    paths = [tmp_path / "a" / "gn.pt", tmp_path / "b" / "other-name.pt"]
    for path in paths:
        save_checkpoint(path, model, TrainConfig(), variant="gn", params=9914)
    assert _md5(paths[0]) == _md5(paths[1])
    other = make_model(ModelConfig(norm="gn"), seed=2)
    save_checkpoint(tmp_path / "c.pt", other, TrainConfig(), variant="gn", params=9914)
    assert _md5(tmp_path / "c.pt") != _md5(paths[0])


def test_weights_of_another_architecture_are_refused(tmp_path):
    model = make_model(ModelConfig(norm="gn"), seed=1)
    save_checkpoint(tmp_path / "m.pt", model, TrainConfig())
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["model"]["width"] = 32 # the saved config no longer matches the saved weights
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(UserError, match="weights do not match the architecture"):
        load_checkpoint(tmp_path / "m.pt", stage="train_gn")
