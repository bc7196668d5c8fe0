"""tools.results: the end of `make repro` and `make study`, within 120 columns and with the files' numbers."""

from __future__ import annotations

import json

from tests.conftest import ROOT
from tools import results


def test_the_models_table_fits_120_columns_and_holds_the_metrics():
    text = results.models(["bn_l1", "gn", "ln"], ROOT / "metrics")
    assert max(map(len, text.splitlines())) <= 120
    rows = {line.split("  ")[0].strip(): line.split() for line in text.splitlines()[1:4]}
    for variant, label in (("bn_l1", "BN + L1"), ("gn", "GN"), ("ln", "LN")):
        m = json.loads((ROOT / "metrics" / f"{variant}.json").read_text())
        cells = rows[label][len(label.split()):]
        assert cells[:4] == [f"{m['test_acc']:.2f}", f"{m['test_loss']:.4f}", f"{m['train_acc']:.2f}",
                             f"{m['gap']:+.2f}"]
        assert cells[4:] == [f"{m['peak_test_acc']:.2f}", f"({m['peak_epoch']})", str(m["errors"]), f"{m['params']:,}"]
    c = json.loads((ROOT / "metrics" / "comparison.json").read_text())
    assert f"every model gets wrong: {c['errors_shared_by_all']}, at least one model: {c['errors_in_any']}" in text


def test_the_study_table_is_narrow_and_holds_its_metrics():
    text = results.study(ROOT / "studies" / "batch_size" / "metrics.json")
    assert max(map(len, text.splitlines())) <= 120
    errors = json.loads((ROOT / "studies" / "batch_size" / "metrics.json").read_text())
    row = next(line for line in text.splitlines() if line.startswith("2 "))
    assert row.split()[1:4] == [f"{errors['BN + L1']['2']['mean']:.2f}", "±", f"{errors['BN + L1']['2']['std']:.2f}"]


def test_the_mnist_c_table_holds_every_set_and_each_mean_error(tmp_path):
    scores = {"bn_l1": {"mean_corruption_error": 12.5, "identity": 99.5, "fog": 80.25},
              "gn": {"mean_corruption_error": 7.0, "identity": 99.25, "fog": 90.0}}
    (tmp_path / "mnist_c.json").write_text(json.dumps(scores))
    lines = results.mnist_c(tmp_path / "mnist_c.json").splitlines()
    assert lines[1].split() == ["MNIST-C", "set", "bn_l1", "gn"]
    assert lines[2].split() == ["identity", "99.50", "99.25"] and lines[3].split() == ["fog", "80.25", "90.00"]
    assert lines[4].split() == ["mean", "corruption", "error", "12.50", "7.00"]
