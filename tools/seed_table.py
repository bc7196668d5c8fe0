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

A run that appears more than once (two baseline commits carrying the same
committed metrics) is counted once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence

METRICS = ("test_acc", "peak_test_acc", "train_acc", "gap", "seconds_per_epoch")


def param(params: dict, key: str):
    """The value of a dotted params.yaml key, or None."""
    for part in key.split("."):
        params = params.get(part) if isinstance(params, dict) else None
    return params


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
            seed = param(params, "train.seed")
            held = param(params, "train.validation") or 0
            group = (param(params, "download.dataset") or "mnist",
                     f"validation ({held} held out)" if held else "test",
                     *(f"{key}={param(params, key)}" for key in by))
            per_variant = {path.split("/")[-1].removesuffix(".json"): f["data"] for path, f in files.items()
                           if "data" in f and path != "metrics/comparison.json"}
            seen = [(r["seed"], r["group"], r["metrics"]) for r in found]
            if per_variant and run.get("rev") != "workspace" and (seed, group, per_variant) not in seen:
                found.append({"name": run.get("name") or run["rev"][:7], "seed": seed, "group": group,
                              "metrics": per_variant})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="Other arguments go to `dvc exp show` (e.g. --rev <commit>, -n 3).")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="a params.yaml key (e.g. train.lr) whose values get a table each; repeatable")
    args, exp_show_args = parser.parse_known_args()
    # The dvc of this interpreter, so that it runs without the virtual environment on PATH.
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *exp_show_args],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: dvc exp show failed: {out.stderr.strip()}")
    found = runs(json.loads(out.stdout), args.by)
    if not found:
        sys.exit("error: no committed run or experiment with metrics; run `dvc exp run -S train.seed=N` first")
    groups = dict.fromkeys(r["group"] for r in found)
    print("\n\n".join(table([r for r in found if r["group"] == g]) for g in groups))


if __name__ == "__main__":
    main()
