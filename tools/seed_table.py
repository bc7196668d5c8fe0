"""Mean and std of each variant's metrics over DVC experiments (e.g. one per seed).

Reads `dvc exp show --json` (the workspace's baseline commit and its
experiments) and prints one row per variant, one table per dataset
(`download.dataset`), so that a Fashion-MNIST experiment is not averaged with
MNIST seeds:

    dvc exp run -S train.seed=2 && dvc exp run -S train.seed=3
    python -m tools.seed_table                 # experiments of the current commit
    python -m tools.seed_table --rev 34f9cd1   # ... of another commit (any `dvc exp show` options)
    python -m tools.seed_table --rev 19b80f4 --rev cd3231d   # seeds run from two commits of one recipe

A run that appears more than once (two baseline commits carrying the same
committed metrics) is counted once.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

METRICS = ("test_acc", "peak_test_acc", "train_acc", "gap", "seconds_per_epoch")


def runs(exp_show: list[dict]) -> list[dict]:
    """Per run (the baseline commit and every experiment): {variant: metrics}, with its seed."""
    found = []
    for baseline in exp_show:
        # Queued, running or failed experiments show their baseline's metrics: leave them out.
        done = [e["revs"][0] for e in baseline.get("experiments") or []
                if (e.get("executor") or {}).get("state", "success") == "success"]
        for run in [baseline, *done]:
            data = (run.get("data") or {})
            files = data.get("metrics") or {}
            params = data.get("params", {}).get("params.yaml", {}).get("data", {})
            seed = params.get("train", {}).get("seed")
            dataset = params.get("download", {}).get("dataset", "mnist")
            per_variant = {path.split("/")[-1].removesuffix(".json"): f["data"] for path, f in files.items()
                           if "data" in f and path != "metrics/comparison.json"}
            seen = [(r["seed"], r["dataset"], r["metrics"]) for r in found]
            if per_variant and run.get("rev") != "workspace" and (seed, dataset, per_variant) not in seen:
                found.append({"name": run.get("name") or run["rev"][:7], "seed": seed, "dataset": dataset,
                              "metrics": per_variant})
    return found


def table(found: list[dict]) -> str:
    variants = sorted({v for r in found for v in r["metrics"]})
    names = ", ".join(f"{r['name']} (seed {r['seed']})" for r in found)
    lines = [f"{found[0]['dataset']}, runs: {names}", "",
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
    # Extra arguments go to `dvc exp show`, e.g. `--rev <commit>` or `-n 3` for experiments of earlier commits.
    # The dvc of this interpreter, so that it runs without the virtual environment on PATH.
    out = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", *sys.argv[1:]],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"error: dvc exp show failed: {out.stderr.strip()}")
    found = runs(json.loads(out.stdout))
    if not found:
        sys.exit("error: no committed run or experiment with metrics; run `dvc exp run -S train.seed=N` first")
    datasets = dict.fromkeys(r["dataset"] for r in found)
    print("\n\n".join(table([r for r in found if r["dataset"] == d]) for d in datasets))


if __name__ == "__main__":
    main()
