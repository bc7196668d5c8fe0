"""tools/seed_table.py: mean +- std per variant over `dvc exp show --json`, one table per dataset."""

from __future__ import annotations

from tools.seed_table import runs, table


def _run(rev: str, name: str | None, seed: int, dataset: str, acc: dict[str, float], **train) -> dict:
    metrics = {f"metrics/{v}.json": {"data": {"label": v.upper(), "test_acc": a, "peak_test_acc": a,
                                              "train_acc": 99.9, "gap": 99.9 - a, "seconds_per_epoch": 5.0}}
               for v, a in acc.items()}
    metrics["metrics/comparison.json"] = {"data": {"best_test_acc": "BN"}}
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
