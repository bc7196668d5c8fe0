"""BatchNorm with test statistics (Schneider et al. 2020): re-estimate every BatchNorm layer's mean and variance on
the very images being scored, so that a shift of the input statistics (contrast, noise, blur) is normalized away as
GroupNorm and LayerNorm do per image.

Assumption: the whole shifted test set is available at once (here: each MNIST-C corruption's 10,000 test images),
and the statistics are those of that whole set, not of each batch; a model scored this way has seen the test images'
statistics, though never their labels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from src.augment import normalize
from src.engine import predict, score

# The name of a BatchNorm model's second series, scored with test statistics.
TEST_STATISTICS = " (test statistics)"


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics, in the order of `modules()`."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` normalizes anywhere with running statistics (BatchNorm)."""
    return bool(batchnorms(model))


def _set_statistics(bn: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook: make the layer's running mean and variance those of the input it is about to normalize."""
    x = inputs[0]
    dims = [d for d in range(x.dim()) if d != 1]  # every dimension but the channels
    var, mean = torch.var_mean(x, dim=dims, correction=0)  # biased, as BatchNorm normalizes in training mode
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)


def with_test_statistics(model: nn.Module, images: torch.Tensor, mean: float, std: float) -> nn.Module:
    """A deep copy of `model` whose BatchNorm layers hold the mean and variance of their inputs on `images` (uint8
    or float pixel values 0-255, (N, 1, 28, 28), standardized with `mean` and `std` as `engine.predict` does).

    One forward of the whole set in evaluation mode, each layer's statistics set just before it runs: exactly what
    a training-mode forward of the whole set normalizes with (biased variance), without its side effects (dropout,
    momentum, an unbiased running variance). The copy keeps the training or evaluation mode of `model`, which is
    left unchanged.
    """
    adapted = copy.deepcopy(model)
    layers = batchnorms(adapted)
    if not layers:
        return adapted
    training = adapted.training
    device = next(adapted.parameters()).device
    channels_last = device.type == "cpu"  # as in engine.predict: faster there (1.5x on 10,000 images)
    hooks = [bn.register_forward_pre_hook(_set_statistics) for bn in layers]
    try:
        adapted.eval()  # dropout off; each layer normalizes with the statistics its hook has just set
        if channels_last:
            adapted.to(memory_format=torch.channels_last)
        with torch.no_grad():
            adapted(normalize(images.to(device), mean, std))
    finally:
        for hook in hooks:
            hook.remove()
        if channels_last:
            adapted.to(memory_format=torch.contiguous_format)  # the copy's weights laid out as the model's
        adapted.train(training)
    return adapted


def series(models: Mapping[str, nn.Module]) -> dict[str, tuple[nn.Module, bool]]:
    """What to score, by label: each model with its own statistics, then each model with BatchNorm a second time
    with test statistics (`<label> (test statistics)`), after all the others, so that every model keeps its colour
    of the other figures: label -> (model, test statistics?)."""
    found = {label: (model, False) for label, model in models.items()}
    found.update({label + TEST_STATISTICS: (model, True) for label, model in models.items() if has_batchnorm(model)})
    return found


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float,
             batch_size: int = 2000, test_statistics: bool = False) -> float:
    """Accuracy in % on `images` (pixel values 0-255, uint8 or float), with `test_statistics` those of `images`."""
    if test_statistics:
        model = with_test_statistics(model, images, mean, std)
    return score(predict(model, images, mean, std, batch_size), labels)[1]
