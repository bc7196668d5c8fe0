"""tools/seed_table.py: mean +- std per variant over `dvc exp show --json`, one table per dataset."""

from __future__ import annotations

import subprocess

from tools.seed_table import runs, table

REAL_RUN = subprocess.run


def _run(rev: str, name: str | None, seed: int, dataset: str, acc: dict[str, float], **train) -> dict:
    metrics = {f"metrics/{v}.json": {"data": {"label": v.upper(), "test_acc": a, "peak_test_acc": a,
                                              "train_acc": 99.9, "gap": 99.9 - a}}
               for v, a in acc.items()}
    metrics["metrics/comparison.json"] = {"data": {"best_test_acc": "BN"}}
    # The per-device study's metrics, which `dvc exp show` lists beside the main pipeline's: not a variant.
    metrics["studies/per_device/metrics.json"] = {"data": {"BN + L1": {"2": {"mean": 1.7, "std": 0.2}}}}
    params = {"params.yaml": {"data": {"train": {"seed": seed, **train}, "download": {"dataset": dataset}}}}
    return {"rev": rev, "name": name, "data": {"metrics": metrics, "params": params}}


def test_mean_and_std_per_variant_and_dataset():
    exp_show = [
        {"rev": "workspace", "data": {}},
        {**_run("a" * 40, "main", 1, "mnist", {"bn": 99.5, "gn": 99.3}),
         "experiments": [{"revs": [_run("b" * 40, "seed2", 2, "mnist", {"bn": 99.7, "gn": 99.5})]},
                         {"revs": [_run("c" * 40, "fashion", 1, "fashion-mnist", {"bn": 91.0, "gn": 90.0})]},
                         {"executor": {"state": "running"},  # shows its baseline's metrics until it ends
                          "revs": [_run("d" * 40, "seed3", 3, "mnist", {"bn": 99.5, "gn": 99.3})]}]},
    ]
    found = runs(exp_show)
    assert [(r["name"], r["seed"], r["group"][0]) for r in found] == [
        ("main", 1, "mnist"), ("seed2", 2, "mnist"), ("fashion", 1, "fashion-mnist")]
    mnist = table([r for r in found if r["group"][0] == "mnist"])
    assert "| BN | 99.60 ± 0.14 |" in mnist and "| GN | 99.40 ± 0.14 |" in mnist
    assert "91.00" not in mnist  # the Fashion-MNIST run is not averaged in
    assert table([found[2]]).startswith("fashion-mnist, test; runs: fashion (seed 1)")


def test_a_run_recorded_at_two_commits_counts_once():
    same = {"bn": 99.5, "gn": 99.3}
    exp_show = [
        {**_run("a" * 40, None, 1, "mnist", same),
         "experiments": [{"revs": [_run("b" * 40, "seed2", 2, "mnist", {"bn": 99.7, "gn": 99.5})]}]},
        {**_run("c" * 40, None, 1, "mnist", same),  # a later commit, same committed metrics
         "experiments": [{"revs": [_run("d" * 40, "seed3", 3, "mnist", {"bn": 99.3, "gn": 99.1})]}]},
        _run("e" * 40, None, 1, "mnist", {"bn": 99.0, "gn": 99.0}),  # seed 1 again, but another run
    ]
    assert [(r["name"], r["seed"]) for r in runs(exp_show)] == [
        ("aaaaaaa", 1), ("seed2", 2), ("seed3", 3), ("eeeeeee", 1)]


def test_a_sweep_gets_one_table_per_value_and_validation_runs_are_kept_apart():
    exp_show = [
        {**_run("a" * 40, "main", 1, "mnist", {"gn": 99.5}, lr=0.05, validation=0),
         "experiments": [{"revs": [_run(c * 40, f"lr{lr}-s{seed}", seed, "mnist", {"gn": acc}, lr=lr, validation=100)]}
                         for c, lr, seed, acc in (("b", 0.04, 1, 99.1), ("c", 0.04, 2, 99.3),
                                                  ("d", 0.06, 1, 99.0), ("e", 0.06, 2, 99.0))]},
    ]
    groups = {}
    for r in runs(exp_show, by=["train.lr"]):
        groups.setdefault(r["group"], []).append(r)
    assert list(groups) == [("mnist", "test", "train.lr=0.05"),
                            ("mnist", "validation (100 held out)", "train.lr=0.04"),
                            ("mnist", "validation (100 held out)", "train.lr=0.06")]
    lr04 = table(groups[("mnist", "validation (100 held out)", "train.lr=0.04")])
    assert lr04.startswith("mnist, validation (100 held out), train.lr=0.04; runs: lr0.04-s1 (seed 1), lr0.04-s2")
    assert "| GN | 99.20 ± 0.14 |" in lr04


def test_a_key_missing_from_an_older_commit_counts_as_its_default():
    exp_show = [
        {**_run("a" * 40, "old", 1, "mnist", {"gn": 99.5}),  # params.yaml without model.arch
         "experiments": [{"revs": [{**_run("b" * 40, "new", 2, "mnist", {"gn": 99.4})}]}]},
    ]
    exp_show[0]["experiments"][0]["revs"][0]["data"]["params"]["params.yaml"]["data"]["model"] = {"arch": "writeup"}
    assert [r["group"] for r in runs(exp_show, by=["model.arch", "train.batch_size"])] == [
        ("mnist", "test", "model.arch=default", "train.batch_size=128"),
        ("mnist", "test", "model.arch=writeup", "train.batch_size=128")]


def test_better_than_tests_each_variant_one_sided():
    from tools.seed_table import versus

    ours, theirs = ("mnist", "test", "model.arch=default"), ("mnist", "test", "model.arch=writeup")
    accs = {ours: {"bn": [99.50, 99.52, 99.54], "gn": [99.40, 99.30, 99.50]},
            theirs: {"bn": [99.40, 99.42, 99.41], "gn": [99.45, 99.35, 99.55]}}
    found = [{"group": g, "metrics": {v: {"label": v.upper(), "test_acc": a[i]} for v, a in by.items()}}
             for g, by in accs.items() for i in range(3)]
    lines = versus(found, ours, theirs).splitlines()
    bn, gn = (next(line for line in lines if line.startswith(f"| {v} |")) for v in ("BN", "GN"))
    assert "+0.110" in bn and bn.endswith("| yes |")  # higher on every seed, little spread
    assert "-0.050" in gn and gn.endswith("| no |")
    p_gn = float(gn.split("|")[5])
    assert 0.5 < p_gn < 1  # lower mean: a one-sided p above one half


def welch_p(a: list[float], b: list[float]) -> float:
    """The one-sided Welch t-test's p-value that `a`'s mean is the higher, by hand: each mean's variance, Welch's t
    and the Welch-Satterthwaite degrees of freedom, then Student's t upper tail."""
    from scipy.stats import t as student

    va, vb = (sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1) / len(v) for v in (a, b))
    t = (sum(a) / len(a) - sum(b) / len(b)) / (va + vb) ** 0.5
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return student.sf(t, df)

WRITEUP = {"model.arch": "writeup", "train.batch_size": 64, "train.loader": "torchvision"}
SHIPPED = {"model": {"arch": "default"}, "train": {"seed": 1, "batch_size": 128, "loader": "tensors",
                                                   "precision": "exact", "validation": 0}}


def _params(seed: int, **changes) -> dict:
    params = {"model": dict(SHIPPED["model"]), "train": {**SHIPPED["train"], "seed": seed}}
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    return params


def test_a_run_is_ours_or_the_writeups_only_with_exactly_their_settings():
    from tools.seed_table import recipe

    writeup = _params(3, model__arch="writeup", train__batch_size=64, train__loader="torchvision")
    assert recipe(_params(1), SHIPPED, WRITEUP) == "ours"
    assert recipe(_params(4), SHIPPED, WRITEUP) == "ours"  # the seed is free
    assert recipe(writeup, SHIPPED, WRITEUP) == "writeup"
    assert recipe(_params(2, train__validation=10000), SHIPPED, WRITEUP) is None  # a tuning run
    assert recipe({**writeup, "train": {**writeup["train"], "lr": 0.1}}, SHIPPED, WRITEUP) is None  # one more change
    assert recipe(_params(2, train__loader="torchvision"), SHIPPED, WRITEUP) is None  # part of the recipe only


def test_the_seed_file_round_trips_merges_and_gives_the_test_computed_by_hand(tmp_path):
    from tools.seed_table import read_seeds, save_seeds, seed_report, seed_rows

    ours, theirs = [99.50, 99.52, 99.54], [99.40, 99.42, 99.41]
    found = [{"seed": s, "commit": "c" * 40, "shipped": SHIPPED, "metrics": {"bn": {"test_acc": a, "train_acc": 99.9}},
              "params": _params(s) if recipe == "ours" else
              _params(s, model__arch="writeup", train__batch_size=64, train__loader="torchvision")}
             for recipe, accs in (("ours", ours), ("writeup", theirs)) for s, a in zip((1, 2, 3), accs)]
    found.append({**found[0], "params": _params(9, train__validation=100)})  # not a run of either recipe
    path = tmp_path / "results" / "seeds.csv"
    rows = save_seeds(seed_rows(found, WRITEUP), path)
    assert path.read_text().splitlines()[:2] == [
        "recipe,variant,seed,test_acc,train_acc,precision,commit", f"ours,bn,1,99.5,99.9,exact,{'c' * 40}"]
    assert read_seeds(path) == rows and len(rows) == 6
    rerun = {**found[1], "metrics": {"bn": {"test_acc": 99.56, "train_acc": 99.9}}}  # seed 2 again
    later = {**found[0], "commit": "d" * 40}  # seed 1 read again at a later commit: the same run, its row kept
    rows = save_seeds(seed_rows([rerun, later], WRITEUP), path)
    assert len(rows) == 6 and [r["test_acc"] for r in rows if r["recipe"] == "ours"] == [99.50, 99.56, 99.54]
    assert [r["commit"] for r in rows if r["recipe"] == "ours"] == ["c" * 40] * 3

    ours[1] = 99.56
    report = seed_report(rows)
    line = next(x for x in report.splitlines() if x.startswith("| bn | ours |"))
    assert line == (f"| bn | ours | 1,2,3 | 99.50 99.56 99.54 | 99.53 ± 0.03 | "
                    f"+0.12, p = {welch_p(ours, theirs):.3f}: yes |")
    assert "|  | writeup | 1,2,3 | 99.40 99.42 99.41 | 99.41 ± 0.01 |  |" in report


def test_versus_gives_welchs_p_computed_by_hand_and_notes_a_variant_short_of_runs():
    from tools.seed_table import versus

    ours, theirs = ("mnist", "test", "model.arch=default"), ("mnist", "test", "model.arch=writeup")
    # GN: unequal sizes and spreads, where Welch's test and Student's differ; LN: two runs on each side, the least
    # that is tested; BN (sorted first): one run of ours, so no test, and the variants after it still get theirs.
    accs = {ours: {"bn": [99.5], "gn": [99.50, 99.60, 99.55], "ln": [99.4, 99.5]},
            theirs: {"bn": [99.4, 99.3], "gn": [99.30, 99.62, 99.41, 99.20], "ln": [99.3, 99.35]}}
    found = [{"group": g, "metrics": {v: {"label": v.upper(), "test_acc": a[i]} for v, a in by.items() if i < len(a)}}
             for g, by in accs.items() for i in range(4)]
    lines = versus(found, ours, theirs).splitlines()
    assert lines[0] == "mnist, test, model.arch=default against model.arch=writeup: test_acc, one-sided Welch t-test"
    assert lines[3] == "|---|---|---|---|---|---|"
    assert {line.count("|") for line in lines[2:]} == {7}  # every row as many cells as the header
    assert lines[4] == "| bn | 1 runs | 2 runs | | | needs 2 runs or more on each side |"

    for v in ("gn", "ln"):
        row = next(line for line in lines if line.startswith(f"| {v.upper()} |")).split("|")
        p = welch_p(accs[ours][v], accs[theirs][v])
        assert row[5].strip() == f"{p:.3f}", v
        assert row[6].strip() == ("yes" if p < 0.05 else "no"), v
    assert lines[5].split("|")[5].strip() == "0.080"  # GN; Student's t-test (equal variances) would give 0.093


def test_a_single_run_has_no_spread_and_every_table_row_has_the_headers_cells():
    found = runs([_run("a" * 40, "main", 1, "mnist", {"bn": 99.5, "gn": 99.25})])
    assert found[0]["shipped"] == {"train": {"seed": 1}, "download": {"dataset": "mnist"}}
    lines = table(found).splitlines()
    assert lines[2].count("|") == lines[3].count("|") == lines[4].count("|")
    assert lines[5].startswith("| GN | 99.25 ± 0.00 |")


def test_the_writeup_recipe_is_read_from_the_makefile(tmp_path):
    import pytest

    from tools.seed_table import writeup_arguments, writeup_overrides

    makefile = tmp_path / "Makefile"
    makefile.write_text("VENV ?= .venv\nWRITEUP_RECIPE := -S model.arch=writeup -S train.lr=0.015 \\\n"
                        "\t-S train.nesterov=false -S 'train.loader=torchvision'\nSEEDS ?= 2,3\n")
    assert writeup_arguments(makefile) == ["-S", "model.arch=writeup", "-S", "train.lr=0.015", "-S",
                                           "train.nesterov=false", "-S", "train.loader=torchvision"]
    assert writeup_overrides(makefile) == {"model.arch": "writeup", "train.lr": 0.015, "train.nesterov": False,
                                           "train.loader": "torchvision"}
    makefile.write_text("SEEDS ?= 2,3\n")
    with pytest.raises(SystemExit, match="has no WRITEUP_RECIPE line"):
        writeup_arguments(makefile)


def test_the_seed_file_is_checked_ordered_and_skips_other_runs(tmp_path):
    import pytest

    from tools.seed_table import read_seeds, save_seeds, seed_rows

    path = tmp_path / "seeds.csv"
    path.write_text("recipe,variant,seed\nours,bn,1\n")
    with pytest.raises(SystemExit, match="has the columns recipe, variant, seed; expected recipe, variant"):
        read_seeds(path)
    path.unlink()
    run = lambda seed, variant, **changes: {  # noqa: E731
        "seed": seed, "commit": "c" * 40, "shipped": SHIPPED, "params": _params(seed, **changes),
        "metrics": {variant: {"test_acc": 99.0 + seed / 10, "train_acc": 99.9}}}
    other = run(7, "bn", train__validation=100)  # a tuning run, listed first: the runs after it still count
    rows = save_seeds(seed_rows([other, run(2, "bn"), run(1, "gn"), run(1, "bn")], WRITEUP), path)
    assert [(r["variant"], r["seed"]) for r in rows] == [("bn", 1), ("bn", 2), ("gn", 1)]
    path.write_text("recipe,variant,seed,test_acc,train_acc,precision,commit\nours,bn,1,99.5,99.9,exact,c\n")
    assert read_seeds(path) == [{"recipe": "ours", "variant": "bn", "seed": 1, "test_acc": 99.5, "train_acc": 99.9,
                                 "precision": "exact", "commit": "c"}]


def test_the_seed_report_tests_only_two_seeds_or_more_on_each_side():
    from tools.seed_table import seed_report

    rows = [{"recipe": r, "variant": v, "seed": s, "test_acc": a, "train_acc": 99.9, "precision": "exact"}
            for r, v, s, a in (("ours", "bn", 1, 99.5), ("ours", "bn", 2, 99.6), ("writeup", "bn", 1, 99.4),
                               ("ours", "gn", 1, 99.5), ("ours", "gn", 2, 99.3),
                               ("writeup", "gn", 1, 99.4), ("writeup", "gn", 2, 99.6),
                               ("ours", "ln", 1, 99.5), ("writeup", "ln", 1, 99.4), ("writeup", "ln", 2, 99.3))]
    lines = seed_report(rows).splitlines()
    assert lines[0] == "final-epoch test accuracy (%), train.precision=exact, from results/seeds.csv"
    assert lines[3] == "|---|---|---|---|---|---|" and {line.count("|") for line in lines[2:]} == {7}
    assert "| ln | ours | 1 | 99.50 | 99.50 |  |" in lines  # one seed of ours: no test either
    assert "| bn | ours | 1,2 | 99.50 99.60 | 99.55 ± 0.07 |  |" in lines  # one writeup seed: no test
    assert "|  | writeup | 1 | 99.40 | 99.40 |  |" in lines  # one seed: no spread
    # Welch's t = -0.1 / sqrt(0.02 / 2 + 0.02 / 2) = -1/sqrt(2) on 2 degrees of freedom, whose upper tail is
    # 1/2 + (1/sqrt(2)) / (2 sqrt(2 + 1/2)) = 0.724.
    assert "| gn | ours | 1,2 | 99.50 99.30 | 99.40 ± 0.14 | -0.10, p = 0.724: no |" in lines


def _main(monkeypatch, capsys, argv: list[str], exp_show: list[dict] | None = None) -> str:
    """tools.seed_table's command line, `dvc exp show --json` answering `exp_show` (through a real process)."""
    import json
    import sys

    from tools import seed_table

    def dvc(cmd, **kwargs):
        assert cmd[1:6] == ["-m", "dvc", "exp", "show", "--json"]
        return REAL_RUN([sys.executable, "-c", f"print({json.dumps(json.dumps(exp_show))})"], **kwargs)

    monkeypatch.setattr(seed_table.subprocess, "run", dvc)
    monkeypatch.setattr(sys, "argv", ["seed_table", *argv])
    seed_table.main()
    return capsys.readouterr().out


def test_the_command_prints_a_table_per_group_and_the_test_against_the_named_one(monkeypatch, capsys, tmp_path):
    import pytest

    exp_show = [{**_run("a" * 40, "main", 1, "mnist", {"gn": 99.5}), "experiments": [
        {"revs": [_run(c * 40, n, s, "mnist", {"gn": a}, **({"arch": "writeup"} if "w" in n else {}))]}
        for c, n, s, a in (("b", "d2", 2, 99.6), ("c", "w1", 1, 99.3), ("d", "w2", 2, 99.2))]}]
    for e in exp_show[0]["experiments"]:  # model.arch lives in its own section
        train = e["revs"][0]["data"]["params"]["params.yaml"]["data"]["train"]
        if train.pop("arch", None):
            e["revs"][0]["data"]["params"]["params.yaml"]["data"]["model"] = {"arch": "writeup"}
    out = _main(monkeypatch, capsys, [], exp_show)
    assert out.count("| GN |") == 1 and "runs: main (seed 1), d2 (seed 2), w1 (seed 1), w2 (seed 2)" in out
    out = _main(monkeypatch, capsys, ["--by", "model.arch", "--better-than", "model.arch=writeup"], exp_show)
    parts = out.split("\n\n")  # title, table; title, table; the test's title, its table
    assert parts[0] == "mnist, test, model.arch=default; runs: main (seed 1), d2 (seed 2)"
    assert parts[2] == "mnist, test, model.arch=writeup; runs: w1 (seed 1), w2 (seed 2)"
    assert "| GN | 99.55 ± 0.07 |" in parts[1] and "| GN | 99.25 ± 0.07 |" in parts[3]
    assert parts[4].strip() == ("mnist, test, model.arch=default against model.arch=writeup: test_acc, "
                                "one-sided Welch t-test")
    assert "| GN | 99.550 ± 0.071 (n=2) | 99.250 ± 0.071 (n=2) | +0.300 |" in parts[5]
    with pytest.raises(SystemExit, match="no run has model.arch=other"):
        _main(monkeypatch, capsys, ["--by", "model.arch", "--better-than", "model.arch=other"], exp_show)
    with pytest.raises(SystemExit):
        _main(monkeypatch, capsys, ["--better-than", "model.arch=writeup"], exp_show)
    assert "--better-than model.arch=writeup needs --by model.arch" in capsys.readouterr().err

    saved = tmp_path / "seeds.csv"
    committed = _run("a" * 40, "main", 1, "mnist", {"gn": 99.5}, precision="exact")
    out = _main(monkeypatch, capsys, ["--save", str(saved)], [committed])
    assert saved.read_text().splitlines()[1] == f"ours,gn,1,99.5,99.9,exact,{'a' * 40}"
    assert _main(monkeypatch, capsys, ["--from", str(saved)]) == out
    with pytest.raises(SystemExit, match="not found or empty"):
        _main(monkeypatch, capsys, ["--from", str(tmp_path / "none.csv")])
    with pytest.raises(SystemExit):
        _main(monkeypatch, capsys, ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    assert "Mean and std of each variant's metrics over DVC experiments (e.g. one per seed)." in help_text
