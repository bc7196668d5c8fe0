import pytest
import torch

from src.engine import TrainConfig
from src.model import ModelConfig, Net, StdConv2d, count_parameters, norm_layer
from src.params import load_params
from src.train import variant_configs
from tests.conftest import ROOT


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_output_shape_and_size(norm):
    model = Net(ModelConfig(norm=norm))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(model) == 9_914  # the shipped network, the same for every norm


@pytest.mark.parametrize("variant", ["bn_l1", "gn", "ln"])
def test_the_defaults_are_what_params_yaml_ships(variant):
    model_cfg, train_cfg = variant_configs(load_params(ROOT / "params.yaml"), variant)
    assert model_cfg == ModelConfig(norm=model_cfg.norm)
    assert train_cfg == TrainConfig(l1=train_cfg.l1)


def test_the_network_is_the_documented_one():
    convs = [m for m in Net(ModelConfig(norm="gn")).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (1, 8, 3, 0), (8, 12, 3, 0), (12, 16, 3, 0), (16, 16, 3, 0), (16, 16, 3, 0), (16, 16, 3, 1), (16, 10, 1, 0)]
    assert all(isinstance(c, StdConv2d) for c in convs[:-1]) and type(convs[-1]) is torch.nn.Conv2d


def _normalized(x, dims):
    """(x - mean) / sqrt(var + eps) with statistics over `dims`; also the number of means."""
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + 1e-5), mean.numel()


# A batch of 4 images with 4 channels of 2x2, as in the write-up.
X = torch.arange(4 * 4 * 2 * 2, dtype=torch.float32).reshape(4, 4, 2, 2) ** 1.5 % 17


def test_batch_norm_uses_one_mean_per_channel():
    layer = norm_layer("bn", 4, gn_groups=2).train()
    expected, n_means = _normalized(X, dims=(0, 2, 3))
    assert n_means == 4
    torch.testing.assert_close(layer(X), expected, atol=1e-5, rtol=1e-4)


def test_layer_norm_uses_one_mean_per_image():
    layer = norm_layer("ln", 4, gn_groups=2)
    expected, n_means = _normalized(X, dims=(1, 2, 3))
    assert n_means == 4
    torch.testing.assert_close(layer(X), expected, atol=1e-5, rtol=1e-4)


def test_group_norm_uses_one_mean_per_image_and_group():
    layer = norm_layer("gn", 4, gn_groups=2)
    grouped = X.reshape(4, 2, 2, 2, 2)  # (B, groups, C/groups, H, W)
    expected, n_means = _normalized(grouped, dims=(2, 3, 4))
    assert n_means == 8
    torch.testing.assert_close(layer(X), expected.reshape(X.shape), atol=1e-5, rtol=1e-4)


def test_unknown_norm_and_bad_groups_are_refused():
    with pytest.raises(ValueError, match="is not a valid Norm"):
        ModelConfig(norm="in")
    with pytest.raises(ValueError, match="gn_groups=3 does not divide"):
        ModelConfig(norm="gn", gn_groups=3)


def test_standardized_convolutions_ignore_each_filters_scale_and_offset():
    torch.manual_seed(0)
    model = Net(ModelConfig(norm="gn", weight_std=True)).eval()
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    with torch.no_grad():
        for conv in (m for m in model.features.modules() if isinstance(m, StdConv2d)):
            scale = torch.rand(conv.out_channels, 1, 1, 1) * 3 + 0.5
            conv.weight.mul_(scale).add_(torch.randn(conv.out_channels, 1, 1, 1))
    # equal up to the epsilon under the square root (1e-5, against filter variances of ~1e-3)
    torch.testing.assert_close(model(x), before, atol=2e-3, rtol=0)
    plain = Net(ModelConfig(norm="gn", weight_std=False)).eval()
    plain.load_state_dict(model.state_dict())
    assert (plain(x) - before).abs().max() > 0.1  # without it, the rescaled weights change the output
