"""Data-parallel training: real DDP processes (gloo, on the CPU) against one process computing the same thing.

`variants.<bn>.bn_images = b` makes one process normalize each group of b images of the batch alone, with running
statistics from the first group: what N = batch / b DDP processes with local BatchNorm compute. Here both run
through the train stage, as `dvc exp run -S train.processes=2` runs it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src import parallel
from src.checkpoint import load_checkpoint
from src.model import PerDeviceBatchNorm2d
from tests.conftest import ROOT
from tests.test_errors import error_line, run, set_param

# After 8 steps, DDP's averaged gradients differ from one process's in the last bits (the sums run in another order),
# which the steps amplify: measured 1e-5 (4e-5 of a running variance). A model trained on whole-batch statistics
# differs by 1e-2. (On these synthetic images, flat bands tie the max-pools, and a tie broken the other way later
# in training lets the two drift further apart.)
CLOSE = 1e-4


def test_per_device_statistics_are_each_groups_own():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    bn = PerDeviceBatchNorm2d(3, 2)
    nn.init.uniform_(bn.weight, 0.5, 2.0), nn.init.uniform_(bn.bias, -1.0, 1.0)
    y = bn(x)
    for i in range(0, 8, 2):  # by hand: each pair of images standardized with its own mean and (biased) variance
        group = x[i : i + 2]
        var, mean = torch.var_mean(group, dim=(0, 2, 3), keepdim=True, correction=0)
        expected = (group - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
        torch.testing.assert_close(y[i : i + 2], expected, atol=1e-5, rtol=1e-5)
    # the running statistics moved 10% towards the first pair's mean and unbiased variance, and only once
    var, mean = torch.var_mean(x[:2], dim=(0, 2, 3), correction=1)
    torch.testing.assert_close(bn.running_mean, 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * var)
    assert bn.num_batches_tracked.item() == 1
    bn.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(bn.state_dict())
    assert torch.equal(bn(x), plain(x))


def test_a_group_as_large_as_the_batch_is_plain_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 5, 5, requires_grad=True)
    bn, plain = PerDeviceBatchNorm2d(3, 8), nn.BatchNorm2d(3)
    assert torch.equal(bn(x), plain(x)) and torch.equal(bn.running_var, plain.running_var)


def test_the_gradient_flows_through_each_group_as_through_its_own_batchnorm():
    torch.manual_seed(1)
    x = torch.randn(6, 2, 4, 4)
    weights = torch.arange(x.numel()).view_as(x).sin()
    x1 = x.clone().requires_grad_()
    (PerDeviceBatchNorm2d(2, 3)(x1) * weights).sum().backward()
    for rows in (slice(0, 3), slice(3, 6)):
        part = x[rows].clone().requires_grad_()
        (F.batch_norm(part, None, None, training=True) * weights[rows]).sum().backward()
        torch.testing.assert_close(x1.grad[rows], part.grad)


# --- the train stage as N processes ------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def importable(monkeypatch):
    """Processes started in the test's working folder find the project's modules."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


def train_bn(out: str, **settings) -> dict[str, torch.Tensor]:
    """`python -m src.train bn_l1` in its own process (as DVC runs it) with `settings`; the model's state dict."""
    for key, value in {"train.epochs": 1, "train.batch_size": 64, "train.threads": 1, **settings}.items():
        set_param(key, value)
    done = subprocess.run([sys.executable, "-m", "src.train", "bn_l1", "--model-out", out, "--live-dir",
                           f"live/{Path(out).stem}", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    model, ckpt = load_checkpoint(Path(out))
    return model.state_dict() | {"processes": ckpt["train"]["processes"]}


def max_difference(a: dict, b: dict) -> float:
    """The largest difference of two state dicts' values, relative to the value where it exceeds 1 (running
    variances reach 100)."""
    return max(((a[k].double() - b[k].double()).abs() / (1 + b[k].double().abs())).max().item()
               for k in a if isinstance(a[k], torch.Tensor))


def test_two_ddp_processes_train_what_one_process_with_per_device_statistics_does(workdir):
    ddp = train_bn("models/ddp.pt", **{"train.processes": 2})
    again = train_bn("models/ddp_again.pt", **{"train.processes": 2})
    one = train_bn("models/one.pt", **{"train.processes": 1, "variants.bn_l1.bn_images": 32})
    whole = train_bn("models/whole.pt", **{"variants.bn_l1.bn_images": 0})
    assert ddp["processes"] == 2 and one["processes"] == 1
    assert max_difference(ddp, again) == 0.0  # the same bits run to run for N = 2
    assert max_difference(ddp, one) < CLOSE  # weights, and running statistics from rank 0's share
    assert max_difference(ddp, whole) > 100 * CLOSE  # statistics over the whole batch are another model
    assert len(list(Path("live").iterdir())) == 4  # rank 0 alone logged, into the one folder it was given


def test_groupnorm_does_not_depend_on_the_split(workdir):
    set_param("train.epochs", 1)
    set_param("train.threads", 1)
    for processes in (2, 1):
        set_param("train.processes", processes)
        assert run("train", "gn", "--model-out", f"models/gn{processes}.pt", "--no-progress") == 0
    two, one = (load_checkpoint(Path(f"models/gn{p}.pt"))[0].state_dict() for p in (2, 1))
    assert max_difference(two, one) < CLOSE


@pytest.mark.parametrize("key, value, message", [
    ("train.processes", 3, "params.yaml: train.processes = 3 does not divide train.batch_size = 64"),
    ("variants.bn_l1.bn_images", 24, "params.yaml: variants.bn_l1.bn_images = 24 does not divide the 64 images per "
                                     "process and step"),
    ("variants.bn_l1.sync_bn", True, "sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU "
                                     "implementation; this run's device is cpu)"),
    ("variants.gn.bn_images", 8, "params.yaml: variants.gn.bn_images applies to norm bn only"),
])
def test_impossible_splits_are_refused_before_any_process_starts(workdir, capsys, key, value, message):
    set_param(key, value)
    variant = key.split(".")[1] if key.startswith("variants") else "bn_l1"
    assert run("train", variant, "--no-progress") == 1
    assert message in error_line(capsys)
    assert not Path("models").exists()


def test_a_torchrun_of_another_size_than_train_processes_is_refused(workdir, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "0")
    assert run("train", "gn", "--no-progress") == 1
    assert "torchrun started 4 processes but train.processes = 1" in error_line(capsys)


def test_one_process_is_outside_any_group():
    assert parallel.share() == (0, 1)
    assert parallel.total(torch.tensor(3.0)).item() == 3.0


def test_a_failure_in_the_processes_is_one_error_line_and_leaves_nothing(workdir, capfd):
    for key, value in {"train.processes": 2, "train.threads": 1, "train.lr": 1e12, "train.grad_clip": 0.0}.items():
        set_param(key, value)
    assert run("train", "bn_l1", "--no-progress") == 1
    err = capfd.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        "error: loss became nan at epoch 1, step 3; no model was saved"]  # rank 0's; the launcher adds nothing
    assert "Traceback" not in err and not Path("models").exists() and not Path("dvclive/bn_l1").exists()
