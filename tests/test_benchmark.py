"""Smoke test of `python -m benchmarks.throughput` on a tiny synthetic dataset (a few seconds)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from benchmarks import throughput
from src.data import load_data
from src.speed import plan
from tests.conftest import train_cfg


@pytest.fixture
def tiny_npz(tmp_path):
    """A dataset file with the keys and dtypes of data/dataset.npz, small enough for a few steps."""
    rng = np.random.default_rng(0)
    path = tmp_path / "dataset.npz"
    np.savez(
        path,
        train_images=rng.integers(0, 256, (512, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, 512, dtype=np.uint8),
        test_images=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 100, dtype=np.uint8),
        mean=0.5, std=0.29, classes=np.array([str(i) for i in range(10)]),
    )
    load_data(path)  # the project's own loader accepts it
    return path


@pytest.mark.parametrize("precision, resolved", [("exact", "fp32, channels-last"), ("fast", None)])
def test_prints_the_ratio_of_the_precision_to_the_baseline(tiny_npz, capsys, precision, resolved):
    rows = throughput.main(["--data", str(tiny_npz), "--variants", "gn", "--steps", "2", "--warmup", "1",
                            "--rounds", "1", "--device", "cpu", "--precision", precision])
    out = capsys.readouterr().out

    assert [r["mode"] for r in rows] == [throughput.BASELINE, precision]
    for r in rows:
        assert r["variant"] == "gn"
        assert r["train_img_s"] > 0 and math.isfinite(r["ratio"]) and r["eval_img_s"] > 0 and r["peak_mib"] > 0
    # exact is float32 channels-last for GroupNorm on every CPU; fast depends on this one (src.speed.plan).
    expected = resolved or plan(precision, "gn", torch.device("cpu")).describe()
    assert rows[1]["resolved"] == expected
    line = next((s for s in out.splitlines() if s.startswith("gn") and f"project {precision} ({expected})" in s), None)
    assert line is not None, f"no table row for {precision}:\n{out}"
    cells = line.split()
    ratio, spread = cells[cells.index("128") + 2 : cells.index("128") + 4]
    assert re.fullmatch(r"\d+\.\d\d", ratio), f"no ratio in {line!r}"
    assert spread == f"{ratio}-{ratio}", f"one round: its ratio is the whole range in {line!r}"
    assert f"train.precision={precision}" in out
    assert re.search(r"gn\s+DataLoader\+PIL\s+64\s", out)


def test_a_run_the_project_cannot_make_is_reported_not_fatal(tiny_npz, capsys, monkeypatch):
    def fit(*args, **kwargs):
        raise RuntimeError("view size is not compatible with input tensor's size and stride")

    monkeypatch.setattr(throughput, "fit", fit)
    rows = throughput.main(["--data", str(tiny_npz), "--variants", "ln", "--steps", "2", "--warmup", "1",
                            "--rounds", "2", "--device", "cpu", "--precision", "fast", "--eval-images", "0"])
    out = capsys.readouterr().out
    assert [(r["mode"], bool(r["error"])) for r in rows] == [(throughput.BASELINE, False), ("fast", True)]
    assert re.search(r"ln\s+project fast \(fp32, channels-last\)\s+128\s+failed\*", out)
    assert "* ln fast: RuntimeError: view size" in out


def test_bad_options_are_one_line_errors(tiny_npz, capsys):
    assert throughput.run(["--data", str(tiny_npz), "--variants", "nope"]) == 1
    assert "unknown variant 'nope'; params.yaml variants are: bn_l1, gn, ln" in capsys.readouterr().err
    assert throughput.run(["--data", str(tiny_npz), "--steps", "100"]) == 1  # 100 x 128 > 512 images
    assert "exceeds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        throughput.parse_args(["--precision", "fp16"])


@pytest.mark.parametrize("n", [1, 4, 5, 6, 10])
def test_one_cycle_schedule_never_divides_by_zero(n):
    # The benchmark times exactly --steps steps (pct_start 0.2: 5 steps once gave OneCycleLR a zero phase);
    # `make_optimizer`, shared with `fit`, keeps every phase of the schedule longer than zero.
    import torch

    from src.engine import make_optimizer

    opt, sched = make_optimizer([torch.zeros(1, requires_grad=True)], train_cfg(lr=0.1, pct_start=0.2), n)
    for _ in range(n):
        opt.step()
        sched.step()
    assert all(torch.isfinite(torch.tensor(sched.get_last_lr())))


def test_profile_prints_each_operator_groups_share_of_the_step(tiny_npz, capsys):
    throughput.main(["--data", str(tiny_npz), "--variants", "bn_l1", "--steps", "2", "--warmup", "1", "--rounds", "1",
                     "--device", "cpu", "--eval-images", "0", "--profile"])
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("  bn_l1 ") and "%" in s)
    shares = dict(part.rsplit(" ", 1) for part in line.split(": ", 1)[1].rstrip("%").split("%, "))
    assert {"convolution backward", "convolution forward", "norm forward", "max-pool"} <= set(shares)
    assert 95 <= sum(map(int, shares.values())) <= 105  # shares of one whole, each rounded


def test_the_ratio_is_taken_round_by_round():
    """A round where the machine was slow for both pipelines does not move the ratio: each round's project rate
    is divided by that round's baseline, and the table gives their median and range."""
    runs = {throughput.BASELINE: throughput.Runs(train=[100.0, 200.0, 150.0]),
            "fast": throughput.Runs(train=[400.0, 800.0, 450.0])}
    rows = {r["mode"]: r for r in throughput.summarize("gn", runs, train_cfg(), 64, "bf16, channels-last stem")}
    assert rows["fast"]["ratio"] == 4.0  # rounds 4x, 4x, 3x (the medians' ratio would say 450 / 150 = 3x)
    assert rows["fast"]["ratio_range"] == (3.0, 4.0)
    table = throughput.format_table(list(rows.values()), torch.device("cpu"))
    assert re.search(r"project fast \(bf16, channels-last stem\)\s+128\s+450\s+4\.00\s+3\.00-4\.00\s", table), table
    failed = throughput.summarize("gn", {throughput.BASELINE: runs[throughput.BASELINE],
                                         "exact": throughput.Runs(train=[200.0], error="RuntimeError: round 2")},
                                  train_cfg(), 64, "fp32, NCHW")
    assert failed[1]["ratio"] == 2.0  # its one round pairs with the baseline's first
