"""src/corruption.py: the MNIST-C scores and each series' mean corruption error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src.adapt import with_test_statistics
from src.corruption import mean_corruption_error, score_corruptions
from src.engine import predict, score
from src.mnist_c import CORRUPTIONS, NAMES
from tests.conftest import synthetic_split
from tests.test_adapt import MEAN, STD, _net

# --- scores ---------------------------------------------------------------------------------------

class FirstPixel(nn.Module):
    """Predicts the class written in each image's first pixel (after `predict`'s standardization with mean 0 and
    std 1/255, which gives back the pixel values)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # predict finds the device through the parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long() % 10, 10).float()


def _sets(correct: dict[str, int], n: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`n` images per set, of which the first `correct[name]` carry their own label in the first pixel."""
    sets = {}
    for name in NAMES:
        labels = torch.arange(n) % 10
        images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
        images[:, 0, 0, 0] = (labels + (torch.arange(n) >= correct.get(name, n)).long()) % 10
        sets[name] = images, labels
    return sets


def test_scores_and_mean_corruption_error_by_hand():
    sets = _sets({"identity": 4, "fog": 3, "zigzag": 1, "shear": 0})
    rows = score_corruptions({"first pixel": FirstPixel()}, sets, 0.0, 1 / 255, batch_size=3)
    acc = {r["corruption"]: r["accuracy"] for r in rows}
    assert [r["model"] for r in rows] == ["first pixel"] * 16 and list(acc) == list(NAMES)  # no BN: one series
    assert acc["identity"] == 100 and acc["fog"] == 75 and acc["zigzag"] == 25 and acc["shear"] == 0
    assert acc["rotate"] == 100
    # Errors: fog 25, zigzag 75, shear 100, the other 12 corruptions 0; identity does not count.
    assert mean_corruption_error(rows) == {"first pixel": pytest.approx(200 / 15)}


def test_mean_corruption_error_on_given_accuracies():
    rows = [{"model": "A", "corruption": "identity", "accuracy": 50.0}]
    rows += [{"model": "A", "corruption": c, "accuracy": 90 + 0.5 * i} for i, c in enumerate(CORRUPTIONS)]
    rows += [{"model": "B", "corruption": c, "accuracy": 99.0} for c in NAMES]
    errors = mean_corruption_error(rows)
    assert list(errors) == ["A", "B"]
    assert errors["A"] == pytest.approx(6.5)  # mean of 10, 9.5, ..., 3: (10 + 3) / 2
    assert errors["B"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="series 'A' has no accuracy on fog"):
        mean_corruption_error([r for r in rows if r["corruption"] != "fog"])


def test_a_batchnorm_model_is_also_scored_with_each_sets_own_statistics():
    images, labels = (torch.from_numpy(a) for a in synthetic_split(32, 0))
    sets = {name: ((images.unsqueeze(1) // (i + 1)), labels.long()) for i, name in enumerate(NAMES[:3])}
    models = {"BN": _net("bn"), "GN": _net("gn")}
    rows = score_corruptions(models, sets, MEAN, STD, batch_size=10)
    assert [(r["model"], r["corruption"]) for r in rows] == [
        (series, name) for series in ("BN", "GN", "BN (test statistics)") for name in NAMES[:3]]  # adapted last
    acc = {(r["model"], r["corruption"]): r["accuracy"] for r in rows}
    for name, (x, y) in sets.items():
        assert acc["BN", name] == score(predict(models["BN"], x, MEAN, STD), y)[1]
        adapted = with_test_statistics(models["BN"], x, MEAN, STD)
        assert acc["BN (test statistics)", name] == score(predict(adapted, x, MEAN, STD), y)[1]


