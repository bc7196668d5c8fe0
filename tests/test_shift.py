"""src/shift.py: the shifted test sets, the norms' invariance that the network's design predicts, and the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from src import cli, evaluate, shift, train
from src.adapt import with_test_statistics
from src.data import load_data
from src.engine import fit, make_model, predict, score
from tests.conftest import model_cfg, train_cfg
from tests.test_errors import error_line, set_param

CPU = torch.device("cpu")


def trained(dataset_file: Path, norm: str) -> torch.nn.Module:
    """A model after one epoch on the synthetic digits: BN with running statistics and shifts of its own."""
    model = make_model(model_cfg(norm=norm), seed=1)
    fit(model, load_data(dataset_file), train_cfg(epochs=1, batch_size=64, lr=0.1), CPU, progress=False)
    return model.eval()


# --- the transforms -------------------------------------------------------------------------------

def test_each_shift_on_known_pixels():
    x = torch.tensor([[[[0, 100, 200]]]], dtype=torch.uint8)
    kinds, noise = shift.KINDS, torch.ones(1, 1, 1, 3)
    assert shift.shifted(x, kinds["contrast"], 2.0, noise).tolist() == [[[[0, 200, 255]]]]
    assert shift.shifted(x, kinds["contrast_unclipped"], 2.0, noise).tolist() == [[[[0.0, 200.0, 400.0]]]]
    assert shift.shifted(x, kinds["brightness"], -0.2, noise).tolist() == [[[[0, 49, 149]]]]  # 255 * 0.2 = 51
    assert shift.shifted(x, kinds["brightness_unclipped"], -0.2, noise).tolist() == [[[[-51.0, 49.0, 149.0]]]]
    assert shift.shifted(x, kinds["noise"], 0.1, noise).tolist() == [[[[26, 126, 226]]]]  # + 25.5, rounded to even
    assert shift.shifted(x, kinds["invert"], 1.0, noise).tolist() == [[[[255, 155, 55]]]]
    assert shift.shifted(x, kinds["invert"], 0.25, noise).tolist() == [[[[64, 114, 164]]]]  # 0.75 x + 0.25 (255 - x)
    assert shift.shifted(x, kinds["contrast"], 1.0, noise).dtype == torch.uint8


def test_rotation_turns_every_other_image_the_other_way_and_blur_keeps_the_mass():
    torch.manual_seed(0)
    x = (torch.rand(2, 1, 28, 28) * 255).round().to(torch.uint8)
    turned = shift.shifted(x, shift.KINDS["rotation"], 90.0, torch.zeros_like(x, dtype=torch.float))
    assert torch.equal(turned[0], torch.rot90(x[0], 1, dims=(1, 2)))  # counter-clockwise
    assert torch.equal(turned[1], torch.rot90(x[1], -1, dims=(1, 2)))
    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 14, 14] = 1000.0
    blurred = shift._blur(dot, 1.0, dot)
    assert blurred.sum().item() == pytest.approx(1000.0, rel=1e-5)
    patch = blurred[0, 0, 11:18, 11:18]  # the dot's neighbourhood: a symmetric bump peaking on the dot
    torch.testing.assert_close(patch, patch.flip(0))
    torch.testing.assert_close(patch, patch.T)
    assert patch[3, 3] == blurred.max()
    assert (patch[3, 4] / patch[3, 3]).item() == pytest.approx(math.exp(-0.5), rel=1e-4)  # exp(-d^2 / 2 sigma^2)
    assert torch.equal(shift._blur(dot, 0.0, dot), dot)


# --- what the network's design predicts ---------------------------------------------------------

@pytest.mark.parametrize("a", [0.25, 4.0])
def test_gn_and_ln_are_invariant_to_contrast_and_bn_is_not(dataset_file, a):
    """Pixels times a: the first weight-standardized convolution (no padding) maps it to its outputs times a,
    which GN and LN divide out per image (up to their eps) and BN, with running statistics, does not."""
    data = load_data(dataset_file)
    x = data.test_images.float()
    for norm in ("gn", "ln", "bn"):
        model = trained(dataset_file, norm)
        plain, scaled = (predict(model, images, data.mean, data.std) for images in (x, x * a))
        if norm == "bn":
            assert (scaled - plain).abs().max() > 0.5
        else:
            torch.testing.assert_close(scaled, plain, rtol=1e-3, atol=1e-3)
            assert torch.equal(scaled.argmax(1), plain.argmax(1))


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_every_norm_is_invariant_to_a_constant_added_to_every_pixel(dataset_file, norm):
    """Each filter of the first convolution sums to zero and sees no padding: the constant vanishes there."""
    data = load_data(dataset_file)
    model, x = trained(dataset_file, norm), data.test_images.float()
    plain = predict(model, x, data.mean, data.std)
    for offset in (-100.0, 100.0):
        torch.testing.assert_close(predict(model, x + offset, data.mean, data.std), plain, rtol=1e-4, atol=1e-4)


def test_scores_hold_the_clean_accuracy_and_every_severity(dataset_file):
    data = load_data(dataset_file)
    models = {"GN": trained(dataset_file, "gn")}
    rows = shift.score_shifts(models, data.test_images, data.test_labels, data.mean, data.std,
                              {"contrast": [0.5, 2.0], "invert": [1.0]}, batch_size=50)
    assert [(r["shift"], r["severity"]) for r in rows] == [
        ("contrast", 1.0), ("contrast", 0.5), ("contrast", 2.0), ("invert", 0.0), ("invert", 1.0)]
    clean = score(predict(models["GN"], data.test_images, data.mean, data.std), data.test_labels)[1]
    assert rows[0]["accuracy"] == rows[3]["accuracy"] == round(clean, 2)
    inverted = score(predict(models["GN"], 255 - data.test_images, data.mean, data.std), data.test_labels)[1]
    assert rows[4]["accuracy"] == round(inverted, 2)


def test_a_batchnorm_model_is_scored_again_with_each_shifted_sets_statistics(dataset_file):
    """The second BN series: its statistics re-estimated on each shifted set, which undoes an unclipped contrast
    change exactly (the first convolution scales by a, the set's statistics scale with it)."""
    data = load_data(dataset_file)
    model = trained(dataset_file, "bn")
    rows = shift.score_shifts({"BN": model}, data.test_images, data.test_labels, data.mean, data.std,
                              {"contrast_unclipped": [0.25, 4.0]}, batch_size=50)
    acc = {(r["model"], r["severity"]): r["accuracy"] for r in rows}
    assert [r["model"] for r in rows] == ["BN", "BN (test statistics)"] * 3
    adapted = with_test_statistics(model, data.test_images, data.mean, data.std)
    own = score(predict(adapted, data.test_images, data.mean, data.std), data.test_labels)[1]
    assert acc["BN (test statistics)", 1.0] == acc["BN (test statistics)", 0.25] == acc["BN (test statistics)", 4.0] \
        == round(own, 2)
    assert acc["BN", 1.0] == round(score(predict(model, data.test_images, data.mean, data.std), data.test_labels)[1], 2)


# --- the stage --------------------------------------------------------------------------------------

def run(app, *argv: str) -> int:
    return cli.run(app, list(argv))


def test_the_stage_writes_what_evaluate_scores_on_the_clean_test_set(workdir, capsys):
    for v in ("bn_l1", "gn", "ln"):
        assert run(train.app, v, "--no-progress") == 0
    assert run(evaluate.app) == 0
    assert run(shift.app) == 0
    assert "scored 3 models (4 series) on 40 test sets" in capsys.readouterr().out
    by_model = json.loads(Path("metrics/shift.json").read_text())
    assert list(by_model) == ["bn_l1", "gn", "ln", "bn_l1_test_statistics"]
    for v, shifts in by_model.items():
        if v.endswith("_test_statistics"):
            continue  # not the model evaluate scores: the clean test set's own statistics
        clean = json.loads(Path(f"metrics/{v}.json").read_text())["test_acc"]
        assert shifts["contrast"]["1"] == shifts["rotation"]["0"] == round(clean, 2)
        assert set(shifts) == set(shift.KINDS)
    rows = Path("plots/shift.csv").read_text().splitlines()
    assert rows[0] == "model,shift,severity,accuracy"
    assert len(rows) - 1 == sum(len(s) for shifts in by_model.values() for s in shifts.values())


def test_a_damaged_model_or_bad_setting_is_one_error_and_writes_nothing(workdir, capsys):
    for v in ("bn_l1", "gn", "ln"):
        assert run(train.app, v, "--no-progress") == 0
    Path("models/ln.pt").write_bytes(b"not a model")
    assert run(shift.app) == 1
    assert "models/ln.pt is corrupt (" in error_line(capsys)
    Path("models/ln.pt").unlink()
    assert run(train.app, "ln", "--no-progress") == 0
    set_param("shift.contrast", [0.5, 0.0])
    assert run(shift.app) == 1
    assert "params.yaml: shift.contrast[1] must be > 0 (got 0.0)" in error_line(capsys)
    assert not Path("metrics").exists() and not Path("plots").exists()
