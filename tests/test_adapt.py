"""src/adapt.py: BatchNorm with test statistics, and the series a model is scored as."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from src.adapt import has_batchnorm, with_test_statistics
from src.augment import normalize
from src.engine import predict
from src.model import Net
from tests.conftest import model_cfg, synthetic_split

MEAN, STD = 0.13, 0.31  # any standardization: the tests compare models under the same one


def _net(norm: str, seed: int = 0, **changes) -> nn.Module:
    """The shipped `Net` with random weights, and random affine parameters and (BN) running statistics, in eval
    mode."""
    torch.manual_seed(seed)
    model = Net(model_cfg(norm=norm, **changes))
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# --- BatchNorm with test statistics -----------------------------------------------------------------

def _images(n: int = 64) -> torch.Tensor:
    return torch.from_numpy(synthetic_split(n, 3)[0]).unsqueeze(1)


@pytest.mark.parametrize("a", [0.25, 4.0])
def test_with_test_statistics_bn_is_contrast_invariant_like_gn_and_ln(a):
    """Pixels times a (unclipped): the first weight-standardized convolution (no padding) scales its outputs by a,
    which GN and LN divide out per image, and BN with the statistics of the scaled set divides out over the set."""
    x = _images().float()
    for norm in ("bn", "gn", "ln"):
        model = _net(norm)
        plain = predict(with_test_statistics(model, x, MEAN, STD), x, MEAN, STD)
        scaled = predict(with_test_statistics(model, x * a, MEAN, STD), x * a, MEAN, STD)
        torch.testing.assert_close(scaled, plain, rtol=1e-3, atol=1e-3)
        if norm == "bn":  # with its own (training) statistics, BN's logits move
            assert (predict(model, x * a, MEAN, STD) - predict(model, x, MEAN, STD)).abs().max() > 0.1
        else:  # GN and LN hold no statistics: nothing to re-estimate
            torch.testing.assert_close(plain, predict(model, x, MEAN, STD), rtol=0, atol=0)


def test_test_statistics_are_the_whole_sets_and_match_a_training_mode_forward():
    model, x = _net("bn"), _images()
    adapted = with_test_statistics(model, x, MEAN, STD)
    first = adapted.features[0][1]
    assert isinstance(first, nn.BatchNorm2d)
    with torch.no_grad():
        var, mean = torch.var_mean(model.features[0][0](normalize(x, MEAN, STD)), dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(first.running_mean, mean)
    torch.testing.assert_close(first.running_var, var)
    # Evaluation mode with test statistics = what training mode computes on the whole set in one batch.
    trained = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = trained(normalize(x, MEAN, STD))
    torch.testing.assert_close(predict(adapted, x, MEAN, STD), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_the_model_passed_in_is_unchanged(training):
    model = _net("bn", dropout=0.2).train(training)  # dropout: the estimate must not depend on it
    before = copy.deepcopy(model.state_dict())
    adapted = with_test_statistics(model, _images(), MEAN, STD)
    assert adapted is not model and adapted.training == training and model.training == training
    assert all(m.training == training for m in model.modules())
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(bn.momentum == 0.1 and not bn._forward_pre_hooks for bn in bns)
    new = [m for m in adapted.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not bn._forward_pre_hooks for bn in new)  # nothing left behind on the copy either
    assert not torch.equal(new[0].running_mean, bns[0].running_mean)
    again = with_test_statistics(model, _images(), MEAN, STD)
    assert all(torch.equal(a.running_var, b.running_var) for a, b in zip(new, [m for m in again.modules()
                                                                             if isinstance(m, nn.BatchNorm2d)]))


def test_has_batchnorm():
    assert has_batchnorm(_net("bn"))
    assert not has_batchnorm(_net("gn")) and not has_batchnorm(_net("ln"))
    model = _net("gn")
    assert with_test_statistics(model, _images(8), MEAN, STD) is not model  # a copy all the same


def test_series_scores_each_model_then_each_batchnorm_model_again_with_test_statistics():
    from src.adapt import series

    bn, gn = _net("bn"), _net("gn")
    found = series({"BN + L1": bn, "GN": gn})
    assert list(found) == ["BN + L1", "GN", "BN + L1 (test statistics)"]
    assert [(model is bn, test) for model, test in found.values()] == [(True, False), (False, False), (True, True)]


def test_accuracy_is_the_percentage_right_with_the_models_own_or_the_test_statistics():
    from src.adapt import accuracy

    model, images = _net("bn"), _images(64)
    with_own = predict(model, images, MEAN, STD).argmax(1)
    with_test = predict(with_test_statistics(model, images, MEAN, STD), images, MEAN, STD).argmax(1)
    assert not torch.equal(with_own, with_test)  # the random running statistics are not the images'
    labels = with_test.clone()  # every image right with test statistics, some wrong without
    own = (with_own == labels).float().mean().item() * 100
    assert accuracy(model, images, labels, MEAN, STD) == pytest.approx(own) and own < 100
    assert accuracy(model, images, labels, MEAN, STD, test_statistics=True) == 100.0
