"""src/checkpoint.py: a model file rebuilds the model exactly, holds plain values only, and is byte-reproducible."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from src.checkpoint import file_md5, load_checkpoint, load_models, save_checkpoint
from src.config import Variant
from src.engine import make_model
from src.errors import UserError
from tests.conftest import model_cfg, train_cfg


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_round_trip_rebuilds_the_same_model(tmp_path, norm):
    model = make_model(model_cfg(norm=norm, gn_groups=2), seed=3)
    if norm == "bn":  # running statistics are part of what must come back
        model.train()(torch.randn(8, 1, 28, 28))
    save_checkpoint(tmp_path / "m.pt", model, train_cfg(epochs=2, l1=1e-4 if norm == "bn" else 0.0), variant="v")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert loaded.cfg == model.cfg
    assert ckpt["train"]["epochs"] == 2 and ckpt["train"]["precision"] == "exact" and ckpt["variant"] == "v"
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_the_same_model_gives_the_same_bytes_wherever_it_is_saved(tmp_path):
    model = make_model(model_cfg(norm="gn"), seed=1)
    paths = [tmp_path / "a" / "gn.pt", tmp_path / "b" / "other-name.pt"]
    for path in paths:
        save_checkpoint(path, model, train_cfg(), variant="gn", params=9914)
    assert _md5(paths[0]) == _md5(paths[1])
    other = make_model(model_cfg(norm="gn"), seed=2)
    save_checkpoint(tmp_path / "c.pt", other, train_cfg(), variant="gn", params=9914)
    assert _md5(tmp_path / "c.pt") != _md5(paths[0])


def test_weights_of_another_architecture_are_refused(tmp_path):
    model = make_model(model_cfg(norm="gn"), seed=1)
    save_checkpoint(tmp_path / "m.pt", model, train_cfg())
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["model"]["width"] = 32 # the saved config no longer matches the saved weights
    torch.save(ckpt, tmp_path / "m.pt")
    with pytest.raises(UserError, match="weights do not match the architecture"):
        load_checkpoint(tmp_path / "m.pt", stage="train_gn")


def test_a_file_holding_code_is_not_loaded_and_says_so(tmp_path):
    model = make_model(model_cfg(norm="gn"), seed=1)
    torch.save({"model": model}, tmp_path / "m.pt")  # a pickled module: unpickling it would run its classes' code
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path / "m.pt", stage="train_gn")
    assert str(error.value).startswith(f"{tmp_path / 'm.pt'} holds objects other than weights (code or classes: ")
    assert str(error.value).endswith(" more) and was not loaded; the train_gn stage makes it")


class RunsACommand:
    """Unpickling this would call `os.system`: the classic payload of a malicious pickle."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_file_that_would_run_a_command_is_named_as_such_not_as_damaged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": RunsACommand()}, "ln.pt")
    with pytest.raises(UserError) as error:
        load_checkpoint("ln.pt")
    assert str(error.value) == ("ln.pt holds objects other than weights (code or classes: posix.system) and was not "
                                "loaded; the train_ln stage makes it")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["cut", "foreign"])
def test_a_damaged_file_is_called_damaged(tmp_path, damage):
    model = make_model(model_cfg(norm="gn"), seed=1)
    save_checkpoint(tmp_path / "gn.pt", model, train_cfg())
    data = (tmp_path / "gn.pt").read_bytes()
    (tmp_path / "gn.pt").write_bytes(data[: len(data) // 2] if damage == "cut" else b"not a model" * 100)
    with pytest.raises(UserError, match="gn.pt is corrupt .not a complete PyTorch model file"):
        load_checkpoint(tmp_path / "gn.pt")


def _models(folder, data, validation=(0, 0), md5s=None, loaders=("tensors", "tensors")):
    """Two saved GN models in `folder` as `a.pt` and `b.pt`, with the given splits, dataset md5s and loaders."""
    md5s = md5s or [file_md5(data)] * 2
    for name, split, md5, loader in zip("ab", validation, md5s, loaders):
        model = make_model(model_cfg(norm="gn"), seed=1)
        save_checkpoint(folder / f"{name}.pt", model, train_cfg(validation=split, loader=loader), data_md5=md5)
    return {name: Variant(label=name, norm="gn") for name in "ab"}


def test_models_load_with_their_split_when_they_agree_on_it_and_on_the_data(tmp_path, dataset_file):
    variants = _models(tmp_path, dataset_file, validation=(100, 100))
    loaded, validation = load_models(tmp_path, variants, dataset_file)
    assert list(loaded) == ["a", "b"] and validation == 100
    assert file_md5(dataset_file) == hashlib.md5(dataset_file.read_bytes()).hexdigest()
    _models(tmp_path, dataset_file, validation=(100, 0))
    with pytest.raises(UserError, match=r"trained on different validation splits \{'a': 100, 'b': 0\}"):
        load_models(tmp_path, variants, dataset_file)
    _models(tmp_path, dataset_file, loaders=("tensors", "torchvision"))  # scored with different input statistics
    with pytest.raises(UserError, match=r"trained on different loaders \{'a': 'tensors', 'b': 'torchvision'\}"):
        load_models(tmp_path, variants, dataset_file)


def test_a_model_trained_on_other_data_is_refused(tmp_path, dataset_file):
    now = file_md5(dataset_file)
    variants = _models(tmp_path, dataset_file, md5s=[now, "0123456789abcdef" * 2])
    with pytest.raises(UserError) as error:
        load_models(tmp_path, variants, dataset_file)
    assert str(error.value) == (f"{tmp_path / 'b.pt'} was trained on other data than {dataset_file} (md5 01234567…; "
                                f"{dataset_file} now: md5 {now[:8]}…)")
    _models(tmp_path, dataset_file, md5s=[now, None])
    with pytest.raises(UserError, match="was trained on other data than .* \\(no record of it;"):
        load_models(tmp_path, variants, dataset_file)
