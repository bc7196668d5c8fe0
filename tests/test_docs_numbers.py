"""The result numbers in README.md and docs/ are the numbers of the committed files they cite: `metrics/`, the
per-device study's metrics, `dvc.lock`, and `results/seeds.csv` (the seed tables, their means, spreads and tests).
"""

from __future__ import annotations

import json
import re
import statistics

import pytest
import yaml
from scipy.stats import ttest_ind

from tests.conftest import ROOT
from tools.seed_table import read_seeds

LABELS = {"BN + L1": "bn_l1", "GN": "gn", "LN": "ln"}
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()
YARDSTICK = (ROOT / "docs" / "yardstick.md").read_text()


def metrics(variant: str) -> dict:
    return json.loads((ROOT / "metrics" / f"{variant}.json").read_text())


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with `header_start`."""
    lines = text[text.index(header_start):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip().strip("*") for cell in line.strip("|").split("|")])
    return rows


def one(pattern: str, text: str) -> tuple[str, ...]:
    found = re.findall(pattern, text, re.S)
    assert len(found) == 1, f"{pattern!r} found {len(found)} times"
    return found[0] if isinstance(found[0], tuple) else (found[0],)


def test_the_run_of_record_in_the_readme_and_results_is_metrics():
    readme = one(r"Run of\s+record \([^)]*\): BN \+ L1 ([\d.]+), GN ([\d.]+), LN ([\d.]+)", README)
    assert readme == tuple(f"{metrics(v)['test_acc']:.2f}" for v in LABELS.values())
    rows = table_rows(RESULTS, "| variant | reference: test (train) |")
    assert [row[0] for row in rows] == list(LABELS)
    for label, _reference, test, best, train, augmented, gap, errors in rows:
        m = metrics(LABELS[label])
        assert [test, best, train, augmented, gap, errors] == [
            f"{m['test_acc']:.2f}", f"{m['peak_test_acc']:.2f} ({m['peak_epoch']})", f"{m['train_acc']:.2f}",
            f"{m['train_acc_augmented']:.2f}", f"{m['gap']:+.2f}", str(m["errors"])], label


def test_the_shared_mistakes_are_comparison_json():
    c = json.loads((ROOT / "metrics" / "comparison.json").read_text())
    shared, any_ = c["errors_shared_by_all"], c["errors_in_any"]
    assert one(r"(\d+) test\s+images are wrong in all\s+three and (\d+) in at least one", RESULTS) == (
        str(shared), str(any_))
    tuning = (ROOT / "docs" / "tuning.md").read_text()
    found = one(r"run of record's (\d+) \(BN \+ L1\), (\d+) \(GN\) and (\d+) \(LN\) misclassified test images, "
                r"only (\d+) are common\s+to all three models and (\d+) are wrong", tuning)
    assert found == (*(str(metrics(v)["errors"]) for v in LABELS.values()), str(shared), str(any_))


def test_the_model_md5s_in_results_are_dvc_lock():
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for label, variant in LABELS.items():
        md5 = next(o["md5"] for o in lock[f"train_{variant}"]["outs"] if o["path"] == f"models/{variant}.pt")
        assert re.search(rf"{re.escape(label)} `{md5[:8]}…`", RESULTS), (label, md5)


def study() -> dict:
    return json.loads((ROOT / "studies" / "per_device" / "metrics.json").read_text())


def study_cell(point: dict | None) -> str:
    """A cell of docs/data_parallel.md's table: mean ± std over the seeds, the value of one seed, or —."""
    if not point:
        return "—"
    return f"{point['mean']:.2f} ± {point['std']:.2f}" if point["seeds"] > 1 else f"{point['mean']:.2f}"


def test_the_per_device_study_in_its_page_and_the_readme_is_its_metrics():
    errors = study()
    page = (ROOT / "docs" / "data_parallel.md").read_text()
    header = next(line for line in page.splitlines() if line.startswith("| test error (%) |"))
    images = [cell.strip() for cell in header.strip("|").split("|")[1:]]
    assert images == [str(b) for b in sorted({int(b) for by in errors.values() for b in by})]
    rows = table_rows(page, "| test error (%) |")
    assert [row[0] for row in rows] == list(errors)
    for label, *cells in rows:
        assert cells == [study_cell(errors[label].get(b)) for b in images], label
    bn = errors["BN + L1"]
    for text in (README, page):
        assert one(r"from ([\d.]+)% at 128 images per device\s+to\s+([\d.]+)% at 2", text) == (
            f"{bn['128']['mean']:.2f}", f"{bn['2']['mean']:.2f}")
    # "from b images up" BN + L1's mean is inside GN's mean ± std: the smallest b from which every larger one is.
    gn = errors["GN"]["128"]
    inside = lambda b: abs(bn[b]["mean"] - gn["mean"]) <= gn["std"]  # noqa: E731
    sizes = sorted(bn, key=int)
    from_images = next(b for i, b in enumerate(sizes) if all(inside(c) for c in sizes[i:]))
    assert one(r"from (\d+) images up stays within the spread of GN's ([\d.]+)%", README) == (
        from_images, f"{gn['mean']:.2f}")
    assert one(r"from (\d+) images up its mean stays inside GN's seed spread\s+\(([\d.]+) ± ([\d.]+)%", page) == (
        from_images, f"{gn['mean']:.2f}", f"{gn['std']:.2f}")


def seeds_csv(variant: str, recipe: str) -> dict[int, float]:
    """seed -> final test accuracy of results/seeds.csv's runs of the shipped precision."""
    return {r["seed"]: r["test_acc"] for r in read_seeds(ROOT / "results" / "seeds.csv")
            if r["variant"] == variant and r["recipe"] == recipe and r["precision"] == "exact"}


def mean_std(values) -> str:
    values = list(values)
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def seed_cells(runs: dict[int, float]) -> list[str]:
    """A row of docs/results.md's seed table: seeds 1-5 (— where not run), then mean ± std (— under two runs)."""
    return [f"{runs[s]:.2f}" if s in runs else "—" for s in range(1, 6)] + [
        mean_std(runs.values()) if len(runs) >= 2 else "—"]


@pytest.mark.parametrize("label", list(LABELS))
def test_the_seed_tables_are_results_seeds_csv(label):
    ours = seeds_csv(LABELS[label], "ours")
    assert sorted(ours) == [1, 2, 3, 4, 5]
    assert ours[1] == metrics(LABELS[label])["test_acc"]  # seed 1 of the shipped settings is the run of record
    rows = {(row[0], row[1]): row[2:] for row in table_rows(RESULTS, "| variant | recipe | seed 1 |")}
    assert rows[label, "ours"] == seed_cells(ours)
    readme = {row[0]: row[1:] for row in table_rows(README, "| variant | this pipeline, 5 seeds |")}
    assert readme[label][0] == mean_std(ours.values())
    writeup = seeds_csv(LABELS[label], "writeup")
    assert rows.get((label, "writeup")) == (seed_cells(writeup) if writeup else None)
    yardstick = {row[0]: row[1:] for row in table_rows(YARDSTICK, "| variant | ours, seeds 1–5 |")}
    assert yardstick[label][0] == mean_std(ours.values())
    assert yardstick[label][1] == (mean_std(writeup.values()) if len(writeup) >= 2 else
                                   f"seed 1: {writeup[1]:.2f}" if writeup else "not run yet")
    if len(writeup) >= 2:  # the test that the README may claim only from two runs a side
        p = ttest_ind(list(ours.values()), list(writeup.values()), equal_var=False, alternative="greater").pvalue
        diff = statistics.mean(ours.values()) - statistics.mean(writeup.values())
        assert readme[label][1] == mean_std(writeup.values())
        assert readme[label][2].startswith(f"{diff:+.2f}, p = {p:.3f}".replace("-", "−"))
        assert yardstick[label][2] == readme[label][2]


def test_the_spread_of_the_three_means_is_what_results_md_says():
    """docs/results.md: "The three means span X points, about one standard deviation of a single seed (A–B)"."""
    span, low, high = one(r"three means span ([\d.]+) points, about one standard deviation of a\s+single seed "
                          r"\(([\d.]+)–([\d.]+)\)", RESULTS)
    runs = [r for r in read_seeds(ROOT / "results" / "seeds.csv") if r["recipe"] == "ours"]
    by = {v: [float(r["test_acc"]) for r in runs if r["variant"] == v] for v in LABELS.values()}
    means = [statistics.mean(a) for a in by.values()]
    stds = [statistics.stdev(a) for a in by.values()]
    assert f"{max(means) - min(means):.2f}" == span
    assert (f"{min(stds):.2f}", f"{max(stds):.2f}") == (low, high)
    assert 0.8 < (max(means) - min(means)) / statistics.mean(stds) < 1.25  # "about one" standard deviation


def test_the_mnist_c_numbers_in_the_readme_and_docs_are_metrics():
    scores = json.loads((ROOT / "metrics" / "mnist_c.json").read_text())
    page = (ROOT / "docs" / "mnist_c.md").read_text()
    rows = table_rows(page, "| MNIST-C set |")
    series = ["bn_l1", "bn_l1_test_statistics", "gn", "ln"]
    assert [row[0] for row in rows] == [*(n.replace("_", " ") for n in scores["bn_l1"] if n != "mean_corruption_error"),
                                        "mean corruption error"]
    for row in rows:
        key = "mean_corruption_error" if row[0] == "mean corruption error" else row[0].replace(" ", "_")
        assert row[1:] == [f"{scores[s][key]:.2f}" for s in series], row[0]
    mce = {s: f"{scores[s]['mean_corruption_error']:.2f}" for s in series}
    readme = one(r"mean corruption errors\s+are\s+BN \+ L1 ([\d.]+)%,\s+BN \+ L1 with test\s+statistics ([\d.]+)%,"
                 r"\s+GN ([\d.]+)%,\s+LN ([\d.]+)%", README)
    assert readme == tuple(mce[s] for s in series)


def test_the_count_of_shifted_copies_is_params_yaml_s():
    """README and docs/shift.md: "scores each model on N transformed copies": the severities params.yaml lists."""
    shift = yaml.safe_load((ROOT / "params.yaml").read_text())["shift"]
    copies = sum(len(v) for k, v in shift.items() if k != "seed")
    for text in (README, (ROOT / "docs" / "shift.md").read_text()):
        assert one(r"scores each model on (\d+) transformed\s+copies", text) == (str(copies),)
