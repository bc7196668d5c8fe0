import pytest
import torch

from src import speed
from src.model import Net, StdConv2d, count_parameters, norm_layer
from src.speed import MaxPool2x2
from tests.conftest import model_cfg


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_output_shape_and_size(norm):
    model = Net(model_cfg(norm=norm))
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert count_parameters(model) == 9_914  # the shipped network, the same for every norm


def test_the_network_is_the_documented_one():
    convs = [m for m in Net(model_cfg(norm="gn")).modules() if isinstance(m, torch.nn.Conv2d)]
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
    with pytest.raises(ValueError, match="Input should be 'bn', 'gn' or 'ln'"):
        model_cfg(norm="in")
    with pytest.raises(ValueError, match="gn_groups = 3 does not divide the channel count 8"):
        model_cfg(norm="gn", gn_groups=3)


def test_standardized_convolutions_ignore_each_filters_scale_and_offset():
    torch.manual_seed(0)
    model = Net(model_cfg(norm="gn", weight_std=True)).eval()
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    with torch.no_grad():
        for conv in (m for m in model.features.modules() if isinstance(m, StdConv2d)):
            scale = torch.rand(conv.out_channels, 1, 1, 1) * 3 + 0.5
            conv.weight.mul_(scale).add_(torch.randn(conv.out_channels, 1, 1, 1))
    # equal up to the epsilon under the square root (1e-5, against filter variances of ~1e-3)
    torch.testing.assert_close(model(x), before, atol=2e-3, rtol=0)
    plain = Net(model_cfg(norm="gn", weight_std=False)).eval()
    plain.load_state_dict(model.state_dict())
    assert (plain(x) - before).abs().max() > 0.1  # without it, the rescaled weights change the output


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_the_writeup_network_is_the_yardstick_of_docs_yardstick(norm):
    """8,880 parameters: six bias-free 3x3 convolutions with ReLU before the norm, the 1x1 transition before the
    pool, GroupNorm groups 2, 4, 3, 4, 4, 4, element-wise dropout 0.04 after the 4th and 5th (its 12 -> 16 and
    first 16 -> 16), a bias-free head."""
    model = Net(model_cfg(norm=norm, arch="writeup"))
    assert count_parameters(model) == 8_880 and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (1, 8, 3, 0), (8, 16, 3, 0), (16, 8, 1, 0), (8, 12, 3, 0), (12, 16, 3, 0), (16, 16, 3, 0), (16, 16, 3, 1),
        (16, 10, 1, 0)]
    assert all(c.bias is None and type(c) is torch.nn.Conv2d for c in convs)
    assert isinstance(model.features[3], torch.nn.MaxPool2d) and isinstance(model.features[2], torch.nn.Conv2d)
    blocks = [b for b in model.features if isinstance(b, torch.nn.Sequential)]
    assert all(isinstance(b[1], torch.nn.ReLU) for b in blocks)  # ReLU, then the norm
    norms = [b[2] for b in blocks]
    if norm == "gn":
        assert [n.num_groups for n in norms] == [2, 4, 3, 4, 4, 4]
    elif norm == "ln":
        assert all(isinstance(n, torch.nn.GroupNorm) and n.num_groups == 1 for n in norms)
    else:
        assert all(isinstance(n, torch.nn.BatchNorm2d) for n in norms)
    assert [b[3].p if isinstance(b[3], torch.nn.Dropout) else 0 for b in blocks] == [0, 0, 0, 0.04, 0.04, 0]


def test_an_unknown_arch_is_refused():
    with pytest.raises(ValueError):
        model_cfg(arch="resnet")


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_relu_before_norm_swaps_only_the_order_in_each_block(norm):
    after, before = Net(model_cfg(norm=norm)), Net(model_cfg(norm=norm, relu_before_norm=True))
    assert count_parameters(before) == count_parameters(after) == 9_914
    blocks = [b for b in before.features if isinstance(b, torch.nn.Sequential)]
    assert len(blocks) == 6
    for block in blocks:
        assert isinstance(block[1], torch.nn.ReLU) and isinstance(block[2], (torch.nn.BatchNorm2d, torch.nn.GroupNorm))
    block, x = before.features[0], torch.randn(2, 1, 28, 28)  # training mode: BN on the batch statistics
    torch.testing.assert_close(block(x), block[2](torch.relu(block[0](x))))
    assert (block(x) < 0).any() and not (after.features[0](x) < 0).any()  # the norm, not the ReLU, is last


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_the_pooled_block_pools_before_its_relu_with_the_same_values_and_gradients(norm):
    net = Net(model_cfg(norm=norm))
    assert [type(m) for m in net.features[1]][2:4] == [torch.nn.MaxPool2d, torch.nn.ReLU]
    with speed.Plan(speed.Layout.false, bf16=False).applied(net):  # as `fit` trains it: the fast max-pool
        _check_pooled_block(net.features[1])  # conv, norm, max-pool, ReLU, dropout (identity)
    assert type(net.features[1][2]) is torch.nn.MaxPool2d  # the plain one again once training ends


def _check_pooled_block(block):
    assert [type(m) for m in block][2:4] == [MaxPool2x2, torch.nn.ReLU]
    conv, norm_layer_, *_ = block
    reference = torch.nn.Sequential(conv, norm_layer_, torch.nn.ReLU(), torch.nn.MaxPool2d(2))  # the textbook order
    x = torch.randn(24, 8, 26, 26)  # 24 x 12 pooled planes: MaxPool2x2's fast path on the CPU
    x[:, :, :4] = 0.0  # ties: whole windows of equal values
    grads = []
    for net in (block, reference):
        xi = x.clone().requires_grad_()
        out = net(xi)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        grads.append((out.detach(), xi.grad, conv.weight.grad.clone()))
        conv.weight.grad = None
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def _pool_with_grad(pool, x, grad):
    x = x.clone().requires_grad_()
    out = pool(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(32, 8, 8, 8), (40, 7, 7, 9)])  # odd sizes: the last row and column are dropped
def test_the_fast_max_pool_gives_the_max_pools_values_and_gradients(dtype, size):
    assert size[0] * size[1] >= MaxPool2x2.MIN_PLANES
    torch.manual_seed(0)
    x = torch.randn(size).round(decimals=1).to(dtype)  # rounded: many ties inside the windows
    x[0, :, :4] = 0.0  # whole windows of equal values: the gradient goes to each window's first element
    b, c, h, w = size
    grad = torch.randn(b, c, h // 2, w // 2).to(dtype)
    fast, reference = _pool_with_grad(MaxPool2x2(), x, grad), _pool_with_grad(torch.nn.MaxPool2d(2), x, grad)
    assert fast[0].is_contiguous() and fast[0].dtype == dtype
    ran = MaxPool2x2()(x.clone().requires_grad_()).grad_fn
    assert type(ran).__name__ == "_PlanesAsChannelsBackward"  # the fast path ran
    for a, b in zip(fast, reference):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), reference[0])


@pytest.mark.parametrize("size, channels_last", [((32, 12, 8, 8), True), ((2, 12, 8, 8), False)])
def test_the_fast_max_pool_leaves_channels_last_and_small_inputs_to_the_built_in_kernel(monkeypatch, size,
                                                                                     channels_last):
    """A channels-last map is pooled by PyTorch's own kernel (vectorized over channels already), and so is a batch
    of fewer than MIN_PLANES planes, where the transposes cost more than they save."""
    def refuse(x):
        raise AssertionError("the planes-as-channels path ran")

    monkeypatch.setattr(speed._PlanesAsChannels, "apply", refuse)
    x = torch.randn(size)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    grad = torch.randn(*size[:2], 4, 4)
    for a, b in zip(_pool_with_grad(MaxPool2x2(), x, grad), _pool_with_grad(torch.nn.MaxPool2d(2), x, grad)):
        assert torch.equal(a, b)


def test_a_standardized_convolution_uses_each_filter_at_zero_mean_and_unit_population_variance():
    torch.manual_seed(0)
    conv = StdConv2d(3, 4, 3, bias=False)
    x = torch.randn(2, 3, 8, 8)
    w = conv.weight.detach()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    var = ((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True)  # population variance: divided by 27, not 26
    by_hand = torch.nn.functional.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5))
    torch.testing.assert_close(conv(x), by_hand, rtol=1e-5, atol=1e-5)  # eps or a 26 moves it by 4e-4 or 2%


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_the_writeup_network_pools_24_to_12_and_ends_on_6x6(norm):
    net = Net(model_cfg(arch="writeup", norm=norm)).eval()
    shapes = []
    for layer in net.features:
        if isinstance(layer, torch.nn.MaxPool2d):
            layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    net.features.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape)))
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert shapes == [(2, 8, 12, 12), (2, 16, 6, 6)]
