"""The result numbers in README.md and docs/ are the numbers of the committed files they cite: `metrics/`, the
batch-size study's metrics, `dvc.lock`, and the seed tables' own per-seed values (their means, spreads and tests).
"""

from __future__ import annotations

import json
import re
import statistics

import pytest
import yaml
from scipy.stats import ttest_ind

from tests.conftest import ROOT

LABELS = {"BN + L1": "bn_l1", "GN": "gn", "LN": "ln"}
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()


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
    return json.loads((ROOT / "studies" / "batch_size" / "metrics.json").read_text())


def test_the_batch_size_study_in_the_readme_and_its_page_is_its_metrics():
    errors = study()
    page = (ROOT / "docs" / "batch_size.md").read_text()
    rows = table_rows(page, "| test error (%), mean ± std of 2 seeds |")
    sizes = sorted(int(b) for b in errors["BN + L1"])
    for label, *cells in rows:
        assert cells == [f"{errors[label][str(b)]['mean']:.2f} ± {errors[label][str(b)]['std']:.2f}" for b in sizes]
    at_2 = tuple(f"{errors[label]['2']['mean']:.1f}" for label in LABELS)
    for text in (README, page):
        assert one(r"twice theirs \(([\d.]+)%\s+against ([\d.]+) and\s+([\d.]+)\)", text) == at_2
    at_64 = tuple(f"{errors[label]['64']['mean']:.2f}" for label in LABELS)
    assert one(r"at 64: ([\d.]+)% against ([\d.]+) and ([\d.]+)\)", page) == at_64
    gn = errors["GN"]
    assert one(r"GN ([\d.]+)% at 64, ([\d.]+)% at 2", page) == (f"{gn['64']['mean']:.1f}", f"{gn['2']['mean']:.1f}")


def seed_table() -> dict[tuple[str, str], list[float]]:
    """(variant, recipe) -> the five seeds' test accuracies of docs/results.md."""
    seeds, variant = {}, None
    for label, recipe, *values in table_rows(RESULTS, "| variant | recipe | seed 1 |"):
        variant = label or variant
        seeds[variant, recipe] = [float(v) for v in values[:5]]
        assert values[5] == f"{statistics.mean(seeds[variant, recipe]):.2f} ± " \
                            f"{statistics.stdev(seeds[variant, recipe]):.2f}", (variant, recipe)
    return seeds


@pytest.mark.parametrize("label", list(LABELS))
def test_the_seed_tables_agree_with_their_seeds_and_the_test(label):
    seeds = seed_table()
    ours, writeup = seeds[label, "ours"], seeds[label, "yardstick"]
    diff = statistics.mean(ours) - statistics.mean(writeup)
    p = ttest_ind(ours, writeup, equal_var=False, alternative="greater").pvalue
    sign = lambda x, digits: f"{x:+.{digits}f}".replace("-", "−")  # noqa: E731 (the docs' minus sign)
    test = {row[0]: row[1:] for row in table_rows(RESULTS, "| variant | difference of the means |")}
    assert test[label][:2] == [sign(diff, 3), f"{p:.3f}" if p < 0.01 else f"{p:.2f}"]
    readme = {row[0]: row[1:] for row in table_rows(README, "| variant | this pipeline, 5 seeds |")}
    mean_std = lambda xs: f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"  # noqa: E731
    assert readme[label][:2] == [mean_std(ours), mean_std(writeup)]
    assert readme[label][2].startswith(f"{sign(diff, 2)}, p = {test[label][1]}")
