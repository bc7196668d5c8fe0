"""Mean and std of each variant's metrics over DVC experiments (e.g. one per seed).

Reads `dvc exp show --json` (the workspace's baseline commit and its
experiments) and prints one row per variant, one table per dataset
(`download.dataset`) and split (test, or the validation split of
`train.validation`), so that a Fashion-MNIST experiment or a tuning run is not
averaged with MNIST test seeds; `--by KEY` splits the tables further by a
parameter, which turns a sweep into one table per value:

    dvc exp run -S train.seed=2 && dvc exp run -S train.seed=3
    python -m tools.seed_table                    # experiments of the current commit
    python -m tools.seed_table --rev 34f9cd1      # ... of another commit (any `dvc exp show` options)
    python -m tools.seed_table --by train.lr      # a sweep: one table per learning rate
    python -m tools.seed_table --by model.arch --better-than model.arch=writeup -n 3
                                                  # our recipe against the yardstick, a test per variant

A run that appears more than once (two baseline commits carrying the same
committed metrics) is counted once. A `--by` key that an older commit's
params.yaml lacks counts as the shipped params.yaml's value for it, so that
runs from before the key existed group with their own.

`--better-than KEY=VALUE` compares every other table of the same dataset and
split with the one of that value: per variant, the difference of the mean test
accuracy and the p-value of a one-sided Welch t-test (scipy) that the other
table's mean is the higher.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from src.config import PARAMS_FILE, get_key, load
from src.files import Corrupt, read_table, write_csv

METRICS = ("test_acc", "peak_test_acc", "train_acc", "gap")


def default(key: str):
    """What a run from before `key` existed used for it: the shipped params.yaml's value (a new setting ships with
    the value that keeps the old behaviour), or None for a key it does not hold."""
    return get_key(load(PARAMS_FILE), key, None)


def group_value(params: dict, key: str):
    value = get_key(params, key, None)
    return default(key) if value is None else value


def runs(exp_show: list[dict], by: Sequence[str] = ()) -> list[dict]:
    """Per run (the baseline commit and every experiment): {variant: metrics}, with its seed and the group it
    belongs to (dataset, split and the values of the `by` keys)."""
    found = []
    for baseline in exp_show:
        # Queued, running or failed experiments show their baseline's metrics: leave them out.
        done = [e["revs"][0] for e in baseline.get("experiments") or []
                if (e.get("executor") or {}).get("state", "success") == "success"]
        for run in [baseline, *done]:
            data = (run.get("data") or {})
            files = data.get("metrics") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            seed = get_key(params, "train.seed", None)
            held = get_key(params, "train.validation", None) or 0
            group = (get_key(params, "download.dataset", None) or "mnist",
                     f"validation ({held} held out)" if held else "test",
                     *(f"{key}={group_value(params, key)}" for key in by))
            # metrics/<variant>.json of the evaluate stage, for the run's variants; not the comparison, the shift or
            # MNIST-C scores, nor other pipelines' metrics (the per-device study's), which DVC gathers too.
            scores = ("metrics/comparison.json", "metrics/shift.json", "metrics/mnist_c.json")
            per_variant = {path.removeprefix("metrics/").removesuffix(".json"): f["data"] for path, f in files.items()
                           if "data" in f and path.startswith("metrics/") and path not in scores}
            seen = [(r["seed"], r["group"], r["metrics"]) for r in found]
            if per_variant and run.get("rev") != "workspace" and (seed, group, per_variant) not in seen:
                found.append({"name": run.get("name") or run["rev"][:7], "seed": seed, "group": group,
                              "metrics": per_variant, "params": params, "commit": baseline.get("rev"),
                              "shipped": (baseline.get("data") or {}).get("params", {}).get("params.yaml", {})
                              .get("data", {})})
    return found


def table(found: list[dict]) -> str:
    variants = sorted({v for r in found for v in r["metrics"]})
    names = ", ".join(f"{r['name']} (seed {r['seed']})" for r in found)
    lines = [f"{', '.join(found[0]['group'])}; runs: {names}", "",
             "| variant | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for v in variants:
        cells = []
        for m in METRICS:
            values = [r["metrics"][v][m] for r in found if v in r["metrics"]]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.2f} ± {std:.2f}")
        label = next(r["metrics"][v].get("label", v) for r in found if v in r["metrics"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versus(found: list[dict], ours: tuple, theirs: tuple, metric: str = "test_acc") -> str:
    """Per variant: the two tables' means of `metric`, their difference and the one-sided Welch t-test's p-value
    for `ours` being the higher."""
    from scipy.stats import ttest_ind

    def values(group: tuple, variant: str) -> list[float]:
        return [r["metrics"][variant][metric] for r in found if r["group"] == group and variant in r["metrics"]]

    variants = sorted({v for r in found if r["group"] in (ours, theirs) for v in r["metrics"]})
    lines = [f"{', '.join(ours)} against {', '.join(theirs[2:])}: {metric}, one-sided Welch t-test", "",
             "| variant | ours | theirs | difference | p | ours higher at p < 0.05 |", "|---" * 6 + "|"]
    for v in variants:
        a, b = values(ours, v), values(theirs, v)
        if len(a) < 2 or len(b) < 2:
            lines.append(f"| {v} | {len(a)} runs | {len(b)} runs | | | needs 2 runs or more on each side |")
            continue
        p = float(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
        label = next(r["metrics"][v].get("label", v) for r in found if v in r["metrics"])
        lines.append(f"| {label} | {statistics.mean(a):.3f} ± {statistics.stdev(a):.3f} (n={len(a)}) | "
                     f"{statistics.mean(b):.3f} ± {statistics.stdev(b):.3f} (n={len(b)}) | "
                     f"{statistics.mean(a) - statistics.mean(b):+.3f} | {p:.3f} | {'yes' if p < 0.05 else 'no'} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# results/seeds.csv: one row per run and variant of the two recipes, committed, so that the README's tables and test
# can be recomputed from a fresh clone (experiments live in one clone only).

SEEDS_FILE = Path("results/seeds.csv")
COLUMNS = ("recipe", "variant", "seed", "test_acc", "train_acc", "precision", "commit")
RECIPES = ("ours", "writeup")


def writeup_arguments(makefile: Path = Path("Makefile")) -> list[str]:
    """The Makefile's WRITEUP_RECIPE as `make yardstick` gives it to `dvc exp run`: ["-S", "key=value", ...]."""
    text = makefile.read_text().replace("\\\n", " ")
    line = re.search(r"^WRITEUP_RECIPE := (.*)$", text, re.M)
    if not line:
        sys.exit(f"error: {makefile} has no WRITEUP_RECIPE line")
    return shlex.split(line.group(1))


def writeup_overrides(makefile: Path = Path("Makefile")) -> dict[str, object]:
    """The write-up's recipe as {key: value}, from the Makefile's WRITEUP_RECIPE."""
    pairs = (arg.partition("=") for arg in writeup_arguments(makefile) if arg != "-S")
    return {key: yaml.safe_load(value) for key, _, value in pairs}


def _flat(params: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe(params: dict, shipped: dict, writeup: dict[str, object]) -> str | None:
    """`ours` if a run's params are the commit's shipped ones but for `train.seed`; `writeup` if they are those
    plus exactly the write-up's overrides; None for any other run (a sweep, a validation split, another dataset)."""
    run, base = _flat(params), _flat(shipped)
    changed = {k: run.get(k) for k in run.keys() | base.keys() if run.get(k) != base.get(k) and k != "train.seed"}
    if not changed:
        return "ours"
    expected = {k: v for k, v in writeup.items() if base.get(k) != v}
    return "writeup" if changed == expected else None


def seed_rows(found: list[dict], writeup: dict[str, object]) -> list[dict]:
    """The rows of results/seeds.csv for the runs of the two recipes among `found` (`runs`' output)."""
    rows = []
    for run in found:
        which = recipe(run["params"], run["shipped"], writeup)
        if which is None:
            continue
        for variant, m in run["metrics"].items():
            rows.append({"recipe": which, "variant": variant, "seed": run["seed"], "test_acc": m["test_acc"],
                         "train_acc": m["train_acc"], "precision": get_key(run["params"], "train.precision"),
                         "commit": run["commit"]})
    return rows


def read_seeds(path: Path = SEEDS_FILE) -> list[dict]:
    if not path.is_file():
        return []
    try:
        rows = read_table(path)
    except Corrupt as e:
        sys.exit(f"error: {path} is damaged: {e}; restore it with `git checkout {path}`")
    if set(rows[0]) != set(COLUMNS):
        sys.exit(f"error: {path} has the columns {', '.join(rows[0])}; expected {', '.join(COLUMNS)}")
    return [{**r, "seed": int(r["seed"]), "test_acc": float(r["test_acc"]), "train_acc": float(r["train_acc"])}
            for r in rows]


def save_seeds(rows: list[dict], path: Path = SEEDS_FILE) -> list[dict]:
    """Merge `rows` into the file: a run of the same recipe, variant, seed and precision replaces the old row,
    unless it has the old row's accuracies (the same run read at a later commit: the row keeps its commit)."""
    key = lambda r: (r["recipe"], r["variant"], r["precision"], r["seed"])  # noqa: E731
    accuracies = lambda r: (r["test_acc"], r["train_acc"])  # noqa: E731
    merged = {key(r): r for r in read_seeds(path)}
    merged.update({key(r): r for r in rows if key(r) not in merged or accuracies(merged[key(r)]) != accuracies(r)})
    ordered = [merged[k] for k in sorted(merged, key=lambda k: (RECIPES.index(k[0]), *k[1:]))]
    write_csv(path, list(COLUMNS), [[r[c] for c in COLUMNS] for r in ordered])
    return ordered


def seed_report(rows: list[dict], precision: str = "exact") -> str:
    """Per variant: each recipe's seeds, mean ± std, and the one-sided Welch t-test that ours is the higher."""
    from scipy.stats import ttest_ind

    rows = [r for r in rows if r["precision"] == precision]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    lines = [f"final-epoch test accuracy (%), train.precision={precision}, from {SEEDS_FILE}", "",
             "| variant | recipe | seeds | test accuracy per seed | mean ± std | ours higher? (one-sided Welch) |",
             "|---" * 6 + "|"]
    for v in variants:
        acc = {r: sorted((x["seed"], x["test_acc"]) for x in rows if x["variant"] == v and x["recipe"] == r)
               for r in RECIPES}
        ours, theirs = ([a for _, a in acc[r]] for r in RECIPES)
        test = ""
        if len(ours) > 1 and len(theirs) > 1:
            p = float(ttest_ind(ours, theirs, equal_var=False, alternative="greater").pvalue)
            test = f"{statistics.mean(ours) - statistics.mean(theirs):+.2f}, p = {p:.3f}: {'yes' if p < 0.05 else 'no'}"
        for r in RECIPES:
            if acc[r]:
                values = [a for _, a in acc[r]]
                spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
                lines.append(f"| {v if r == 'ours' or not ours else ''} | {r} | {','.join(str(s) for s, _ in acc[r])} "
                             f"| {' '.join(f'{a:.2f}' for a in values)} | {statistics.mean(values):.2f}{spread} "
                             f"| {test if r == 'ours' else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Other arguments go to `dvc exp show` (e.g. --rev <commit>, -n 3).")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="a params.yaml key (e.g. train.lr) whose values get a table each; repeatable")
    parser.add_argument("--better-than", metavar="KEY=VALUE",
                        help="test every other table against the one of this --by value (e.g. model.arch=writeup)")
    parser.add_argument("--save", type=Path, metavar="CSV",
                        help=f"merge the runs of our recipe and the write-up's into this file (e.g. {SEEDS_FILE}), "
                             "then print its table")
    parser.add_argument("--from", dest="source", type=Path, metavar="CSV",
                        help=f"print the table of this file (e.g. {SEEDS_FILE}) without reading any experiment")
    args, exp_show_args = parser.parse_known_args()
    if args.source:
        rows = read_seeds(args.source)
        if not rows:
            sys.exit(f"error: {args.source} not found or empty; `make seeds` and `make yardstick` write it")
        print(seed_report(rows))
        return
    if args.better_than and args.better_than.partition("=")[0] not in args.by:
        parser.error(f"--better-than {args.better_than} needs --by {args.better_than.partition('=')[0]}")
    # The dvc of this interpreter, so that it runs without the virtual environment on PATH.
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *exp_show_args],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: dvc exp show failed: {out.stderr.strip()}")
    found = runs(json.loads(out.stdout), args.by)
    if not found:
        sys.exit("error: no committed run or experiment with metrics; run `dvc exp run -S train.seed=N` first")
    if args.save:
        rows = save_seeds(seed_rows(found, writeup_overrides()), args.save)
        print(seed_report(rows))
        return
    groups = dict.fromkeys(r["group"] for r in found)
    print("\n\n".join(table([r for r in found if r["group"] == g]) for g in groups))
    if args.better_than:
        key = args.better_than.partition("=")[0]
        index = 2 + args.by.index(key)
        theirs = [g for g in groups if g[index] == args.better_than]
        if not theirs:
            sys.exit(f"error: no run has {args.better_than}; the tables are: {'; '.join(map(', '.join, groups))}")
        for base in theirs:
            rivals = [g for g in groups if g != base and g[:2] == base[:2]]
            print("\n\n" + "\n\n".join(versus(found, g, base) for g in rivals))


if __name__ == "__main__":
    main()
