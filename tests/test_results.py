"""tools.results: the end of `make repro` and `make study`, within 120 columns and with the files' numbers."""

from __future__ import annotations

import json

import pytest

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


def test_the_study_table_is_narrow_and_holds_its_metrics(tmp_path):
    errors = {"BN + L1": {"2": {"mean": 1.25, "std": 0.5, "seeds": 3}, "128": {"mean": 0.5, "std": 0.04, "seeds": 3}},
              "GN, 2 DDP processes": {"64": {"mean": 0.456, "std": 0.0, "seeds": 1}}}
    (tmp_path / "metrics.json").write_text(json.dumps(errors))
    lines = results.study(tmp_path / "metrics.json").splitlines()
    assert max(map(len, lines)) <= 120 and lines[0] == "test error (%), mean ± std over 1/3 seeds"
    assert lines[1].split() == ["images", "per", "device", "2", "64", "128"]
    assert lines[2].split() == ["BN", "+", "L1", "1.25", "±", "0.50", "-", "0.50", "±", "0.04"]
    assert lines[3].split() == ["GN,", "2", "DDP", "processes", "-", "0.46", "±", "0.00", "-"]


def test_the_mnist_c_table_holds_every_set_and_each_mean_error(tmp_path):
    scores = {"bn_l1": {"mean_corruption_error": 12.5, "identity": 99.5, "fog": 80.25},
              "gn": {"mean_corruption_error": 7.0, "identity": 99.25, "fog": 90.0}}
    (tmp_path / "mnist_c.json").write_text(json.dumps(scores))
    lines = results.mnist_c(tmp_path / "mnist_c.json").splitlines()
    assert lines[1].split() == ["MNIST-C", "set", "bn_l1", "gn"]
    assert lines[2].split() == ["identity", "99.50", "99.25"] and lines[3].split() == ["fog", "80.25", "90.00"]
    assert lines[4].split() == ["mean", "corruption", "error", "12.50", "7.00"]


def _metrics(folder, split: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for variant, label, acc in (("bn", "BN", 99.5), ("gn", "GN", 99.25)):
        (folder / f"{variant}.json").write_text(json.dumps({
            "label": label, "split": split, "test_acc": acc, "test_loss": 0.02, "train_acc": 99.75,
            "gap": 99.75 - acc, "peak_test_acc": acc, "peak_epoch": 20, "errors": 50, "params": 9914}))
    (folder / "comparison.json").write_text(json.dumps({
        "best_test_acc": "BN", "least_overfit": "BN", "most_overfit": "GN", "errors_shared_by_all": 12,
        "errors_in_any": 80}))


def test_a_validation_run_names_its_split_in_the_header(tmp_path):
    _metrics(tmp_path, "validation")
    lines = results.models(["bn", "gn"], tmp_path).splitlines()
    assert lines[0].split()[:5] == ["model", "validation", "acc", "%", "validation"]
    assert lines[1].split() == ["BN", "99.50", "0.0200", "99.75", "+0.25", "99.50", "(20)", "50", "9,914"]
    assert lines[-2] == "best validation accuracy: BN; least overfit: BN; most overfit: GN"
    assert "test" not in results.models(["bn", "gn"], tmp_path)


def test_the_command_prints_the_models_then_mnist_c_or_the_study(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("variants:\n  gn: {norm: gn}\n  bn: {norm: bn}\n")
    _metrics(tmp_path / "metrics", "test")
    results.main([])
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:3]] == ["GN", "BN"]  # params.yaml's order
    (tmp_path / "metrics" / "mnist_c.json").write_text(json.dumps({"gn": {"mean_corruption_error": 7.0,
                                                                         "identity": 99.25}}))
    results.main([])
    assert capsys.readouterr().out.splitlines()[-1].split() == ["mean", "corruption", "error", "7.00"]
    (tmp_path / "studies" / "per_device").mkdir(parents=True)
    (tmp_path / "studies" / "per_device" / "metrics.json").write_text(json.dumps({"GN": {"8": {
        "mean": 0.5, "std": 0.25, "seeds": 3}}}))
    results.main(["--study"])
    assert capsys.readouterr().out.splitlines()[-1].split() == ["GN", "0.50", "±", "0.25"]
    with pytest.raises(SystemExit):
        results.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    assert "The metrics of the last `dvc repro` as tables that fit 120 columns" in help_text
