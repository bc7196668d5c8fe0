"""`dvc plots show` / `dvc plots diff` on the end-to-end repository: the specs of .dvc/plots/'s templates, and
the HTML page as headless Chromium renders it offline (tools/plots_page.py, tests/browser/render.mjs)."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tiny_params, write_mnist
from tests.test_pipeline import IN_CI, make_repo, sh
from tools.plots_page import charts_only, missing_tools, offline_page, render, show_page

MODELS = ["BN + L1", "GN", "LN"]  # params.yaml's labels, in variant order
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c"]  # matplotlib's C0, C1, C2: the PNG figures' colours
CURVES = ["Test loss per epoch", "Test accuracy per epoch", "Train accuracy per epoch (augmented batches)"]
DIAGONAL_GREY = "#e6e6e6"  # .dvc/plots/mistakes.json: the correct cells, apart from the colour scale
SHIFT = "Accuracy on shifted test images"
MNIST_C = "MNIST-C, accuracy per corruption"
SERIES = ["BN + L1", "GN", "LN", "BN + L1 (test statistics)"]  # the shift and MNIST-C charts' models
TAB10_4 = [*TAB10, "#d62728"]  # C0-C3: four series
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """The pipeline reproduced (three epochs, so that curves have segments) and committed."""
    base = tmp_path_factory.mktemp("plots")
    repo, env = make_repo(base, tiny_params(epochs=3), write_mnist(base / "mnist"))
    sh("dvc", "repro", cwd=repo, env=env)
    sh("git", "add", "-A", cwd=repo, env=env)
    sh("git", "commit", "-qm", "results", cwd=repo, env=env)
    return repo, env


@pytest.fixture(scope="module")
def browser() -> None:
    """Chromium, node and the npm copies of the page's scripts: a skip without them, a failure in CI."""
    if missing := missing_tools():
        message = f"the browser check needs: {'; '.join(missing)} (.ci/run installs them)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def shown(project) -> dict[str, dict]:
    """`dvc plots show --json`: {plot title: its filled Vega-Lite spec}."""
    repo, env = project
    return specs(sh("dvc", "plots", "show", "--json", "-o", str(repo.parent / "json"), cwd=repo, env=env))


@pytest.fixture(scope="module")
def page_report(browser, project, tmp_path_factory) -> dict:
    """What Chromium drew of the workspace's `dvc plots show` page."""
    repo, env = project
    out = tmp_path_factory.mktemp("page")
    return render(show_page(repo, out / "html", env), out / "shots")


def specs(output: str) -> dict[str, dict]:
    """The Vega specs of a `dvc plots ... --json` output, by title."""
    data = json.loads(output)["data"]
    return {name: items[0]["content"] for name, items in data.items() if items and items[0]["type"] == "vega"}


def encodings(spec, channel: str) -> list[dict]:
    """Every encoding of `channel` anywhere in a (layered, concatenated, faceted) spec."""
    if isinstance(spec, list):
        return [e for item in spec for e in encodings(item, channel)]
    if not isinstance(spec, dict):
        return []
    encoding = spec.get("encoding")
    found = [encoding[channel]] if isinstance(encoding, dict) and channel in encoding else []
    return found + [e for key, value in spec.items() if key != "data" for e in encodings(value, channel)]


def chart(report: dict, title: str) -> dict:
    """The rendered chart of that title in a render.mjs report."""
    return next(c for c in report["charts"] if c["title"] == title)


def assert_clean(report: dict) -> None:
    """No console error, no uncaught exception, no request off the machine, every chart embedded."""
    assert report["console_errors"] == [] and report["page_errors"] == [], report
    assert report["blocked_requests"] == [], "the page asked the network for something"
    failed = [(c["title"], c.get("error")) for c in report["charts"] if not c["ok"]]
    assert not failed, failed


def colour_pixels(png: Path, colour: str, tolerance: int = 12) -> int:
    """How many pixels of a screenshot are within `tolerance` (per channel) of `colour`."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=int)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target) <= tolerance).all(-1).sum())


def rewrite_csv(path: Path, change: Callable[[dict], dict]) -> None:
    """Apply `change` to every row of a CSV file, in place."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(map(change, rows))


def cell_counts(path: Path) -> Counter:
    """(actual, predicted) -> test images, for the cells of a confusion CSV that hold any."""
    with open(path, newline="") as f:
        return Counter((r["actual"], r["predicted"]) for r in csv.DictReader(f))


@pytest.mark.parametrize("title", CURVES)
def test_per_epoch_spec_colours_by_model_with_all_three(shown, title):
    spec = shown[title]
    colour = encodings(spec, "color")
    assert colour and all(e["field"] == "model" for e in colour)
    assert [e["scale"]["range"][:3] for e in colour if "scale" in e] == [TAB10]
    assert {"calculate": "datum.field", "as": "model"} in spec["transform"]  # DVC's column name -> model
    rows = spec["data"]["values"]
    assert [m for m in MODELS if any(r["field"] == m for r in rows)] == MODELS
    assert {e["field"] for e in encodings(spec, "strokeDash")} == {"rev"}
    assert len(spec["hconcat"]) == 2  # all epochs, and the last ones on their own axis


def test_per_class_spec_has_class_on_the_category_axis_and_accuracy_on_the_value_axis(shown):
    spec = shown["Per-class test accuracy"]
    [x] = encodings(spec, "x")
    [y] = encodings(spec, "y")
    assert (x["field"], x["type"], x["title"]) == ("category", "nominal", "class")
    assert (y["field"], y["type"], y["title"]) == ("value", "quantitative", "test accuracy (%)")
    assert {"calculate": "'' + datum['class']", "as": "category"} in spec["transform"]
    assert {"calculate": "toNumber(datum['dvc_inferred_y_value'])", "as": "value"} in spec["transform"]
    assert y["scale"]["zero"] is False  # the range shows the differences, not 0..100
    assert [e["field"] for e in encodings(spec, "xOffset")] == ["series"]  # one bar per model in each group
    assert {r["class"] for r in spec["data"]["values"]} == {str(d) for d in range(10)}


def test_plots_diff_spec_tells_model_and_revision_apart(project, tmp_path):
    repo, env = project
    path = repo / "plots" / "curves" / "test_acc.csv"
    original = path.read_text()
    try:  # the workspace one point below HEAD
        rewrite_csv(path, lambda row: {k: v if k == "epoch" else float(v) - 1 for k, v in row.items()})
        spec = specs(sh("dvc", "plots", "diff", "HEAD", "--json", "-o", str(tmp_path / "diff"), cwd=repo, env=env))
    finally:
        path.write_text(original)
    acc = spec["Test accuracy per epoch"]
    pairs = {(r["rev"], r["field"]) for r in acc["data"]["values"]}
    assert pairs == {(rev, m) for rev in ("HEAD", "workspace") for m in MODELS}
    assert {e["field"] for e in encodings(acc, "color")} == {"model"}
    assert {e["field"] for e in encodings(acc, "strokeDash")} == {"rev"}


def test_page_renders_offline_without_errors(page_report):
    assert_clean(page_report)
    assert [c["title"] for c in page_report["charts"]] == [*CURVES, "Per-class test accuracy", SHIFT, MNIST_C,
                                                           *(f"Confusion matrix, {m}" for m in MODELS)]


def test_shift_spec_has_one_panel_per_kind_and_colours_by_model(shown):
    from src.shift import KINDS

    spec = shown[SHIFT]
    assert spec["facet"]["field"] == "shift" and spec["resolve"]["scale"]["x"] == "independent"
    assert {e["field"] for e in encodings(spec, "color")} == {"model"}
    assert {e["field"] for e in encodings(spec, "strokeDash")} == {"rev"}
    rows = spec["data"]["values"]
    assert list(dict.fromkeys(r["shift"] for r in rows)) == [kind.title for kind in KINDS.values()]
    assert list(dict.fromkeys(r["model"] for r in rows)) == SERIES


def test_mnist_c_spec_puts_the_sets_in_the_benchmarks_order_and_colours_by_model(shown):
    from src.mnist_c import NAMES

    spec = shown[MNIST_C]
    [x] = encodings(spec, "x")
    assert (x["field"], x["type"], x["sort"]) == ("corruption", "nominal", {"field": "place", "op": "min"})
    assert {e["field"] for e in encodings(spec, "color")} == {"model"}
    assert {e["field"] for e in encodings(spec, "strokeDash")} == {"rev"}
    rows = spec["data"]["values"]
    assert list(dict.fromkeys(r["corruption"] for r in rows)) == list(NAMES)
    assert list(dict.fromkeys(r["model"] for r in rows)) == SERIES


def test_shift_chart_draws_a_line_per_model_in_every_panel(project, page_report):
    from src.shift import KINDS

    drawn = chart(page_report, SHIFT)
    assert drawn["color_domain"] == SERIES and drawn["color_range"] == TAB10_4
    assert sorted(drawn["line_strokes"]) == sorted(TAB10_4)
    assert drawn["line_count"] == len(KINDS) * len(SERIES)  # one line per series in each panel
    for colour in TAB10_4:
        assert colour_pixels(Path(drawn["screenshot"]), colour) > 50, colour


def test_mnist_c_chart_draws_a_line_per_model(page_report):
    drawn = chart(page_report, MNIST_C)
    assert drawn["color_domain"] == SERIES and drawn["color_range"] == TAB10_4
    assert sorted(drawn["line_strokes"]) == sorted(TAB10_4) and drawn["line_count"] == len(SERIES)
    for colour in TAB10_4:
        assert colour_pixels(Path(drawn["screenshot"]), colour) > 50, colour


def test_test_accuracy_chart_draws_three_model_colours(page_report):
    acc = chart(page_report, "Test accuracy per epoch")
    assert acc["color_domain"] == MODELS and acc["color_range"] == TAB10
    assert sorted(acc["line_strokes"]) == sorted(TAB10)
    assert acc["legend_labels"][:3] == MODELS
    for colour in TAB10:  # on the screen, not only in the scene graph
        assert colour_pixels(Path(acc["screenshot"]), colour) > 50, colour


def test_mistakes_chart_colours_only_off_diagonal_cells_and_prints_every_count(project, page_report):
    repo, _ = project
    for v, label in zip(("bn_l1", "gn", "ln"), MODELS):
        drawn = chart(page_report, f"Confusion matrix, {label}")
        cells = cell_counts(repo / "plots" / "confusion" / f"{v}.csv")
        wrong = [n for (actual, predicted), n in cells.items() if actual != predicted]
        # The correct images would otherwise set the colour scale and wash the mistakes out.
        assert drawn["color_domain"] == ([min(wrong), max(wrong)] if wrong else []), label
        fills = Counter(drawn["rect_fills"])
        assert fills.pop(DIAGONAL_GREY) == len(cells) - len(wrong), label  # correct cells: grey
        assert sum(fills.values()) == len(wrong), label  # one coloured cell per kind of mistake
        assert sorted(map(int, drawn["mark_texts"])) == sorted(cells.values()), label


def test_per_class_chart_draws_fashion_class_names_in_class_order(browser, project, tmp_path):
    repo, env = project
    copy = tmp_path / "fashion"
    shutil.copytree(repo, copy, symlinks=True)
    for path in [copy / "plots" / "per_class_accuracy.csv", *(copy / "plots" / "confusion").glob("*.csv")]:
        rewrite_csv(path, lambda row: {k: FASHION[int(v)] if k in ("class", "actual", "predicted") else v
                                       for k, v in row.items()})
    report = render(show_page(copy, tmp_path / "html", env), tmp_path / "shots")
    assert_clean(report)
    assert chart(report, "Per-class test accuracy")["x_domain"] == FASHION


def test_screenshot_page_keeps_the_charts_and_drops_the_png_figures(browser, project, tmp_path):
    repo, env = project
    sh("dvc", "plots", "show", "-o", str(tmp_path / "html"), cwd=repo, env=env)
    page = offline_page(tmp_path / "html" / "index.html")
    assert "file://" in page.read_text() and "cdn.jsdelivr.net" not in page.read_text()
    html = charts_only(page).read_text()
    assert "<img" not in html and html.count("vegaEmbed(") == 9 and html.rstrip().endswith("</html>")
