"""src/plot.py: the figures' content (lines, legend, inset, captions) and the readers of the evaluate stage's files."""

from __future__ import annotations

import numpy as np
import pytest

from src.errors import UserError
from src.files import save_figure, write_csv
from src.plot import draw_curves, draw_misclassified, read_curves

CURVES = {"BN + L1": [90.0 + e / 2 for e in range(20)], "GN": [91.0 + e / 2 for e in range(20)],
          "LN": [92.0 + e / 2 for e in range(19)]}


def test_curves_one_line_per_model_with_legend_and_late_epoch_inset():
    fig = draw_curves(CURVES, "Graph 2: test accuracy per epoch", "test accuracy (%)")
    ax, inset = fig.axes[0], fig.axes[0].child_axes[0]
    assert ax.get_title() == "Graph 2: test accuracy per epoch" and ax.get_ylabel() == "test accuracy (%)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(CURVES)
    lines = ax.get_lines()
    assert [len(line.get_xdata()) for line in lines] == [20, 20, 19]
    assert len({line.get_color() for line in lines}) == 3  # one colour per model
    assert list(inset.get_lines()[0].get_xdata()) == list(range(11, 21))  # the last 10 epochs
    assert inset.get_title() == "last 10 epochs"


def test_short_runs_have_no_inset():
    fig = draw_curves({"GN": [1.0, 2.0, 3.0]}, "t", "y")
    assert fig.axes[0].child_axes == []


def test_misclassified_grid_captions_true_predicted_confidence_and_index(tmp_path):
    images = np.zeros((30, 28, 28), dtype=np.uint8)
    items = [{"index": i, "true": str(i % 10), "predicted": str((i + 1) % 10), "confidence": 0.5 + i / 100}
             for i in range(12)]
    fig = draw_misclassified(images, items, "GN: 10 misclassified test images (of 12)")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 10 and len(shown) == 10  # a 2 x 5 grid, the first ten items
    assert shown[3].get_title() == "true 3, pred 4\nconf 53.0%  #3"
    assert fig.get_suptitle() == "GN: 10 misclassified test images (of 12)"
    long = [{"index": 0, "true": "T-shirt/top", "predicted": "Ankle boot", "confidence": 0.9}]
    title = [ax for ax in draw_misclassified(images, long, "t").axes if ax.images][0].get_title()
    assert title.startswith("true T-shirt/top\npred Ankle boot")  # long class names on lines of their own
    save_figure(fig, tmp_path / "grid.png", dpi=30)
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_read_curves_reads_what_evaluate_writes(tmp_path):
    path = tmp_path / "test_acc.csv"
    write_csv(path, ["epoch", *CURVES], [[e + 1, *(v[e] if e < len(v) else "" for v in CURVES.values())]
                                         for e in range(20)])
    assert read_curves(path) == CURVES
    path.write_text("epoch,GN\n1,not-a-number\n")
    with pytest.raises(UserError, match="test_acc.csv is corrupt .*; the evaluate stage makes it"):
        read_curves(path)
