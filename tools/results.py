"""The metrics of the last `dvc repro` as tables that fit 120 columns: what `make repro` and `make study` end with.

    python -m tools.results            # the three models (metrics/<variant>.json, metrics/comparison.json, and
                                       # metrics/mnist_c.json: accuracy per MNIST-C set)
    python -m tools.results --study    # the per-device study: test error (%) per images per device, mean ± std

`dvc metrics show` holds the same numbers with every key a column, wider than a terminal.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

METRICS = Path("metrics")
STUDY = Path("studies/per_device/metrics.json")


def _read(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; `dvc repro` makes it")
    return json.loads(path.read_text())


def table(rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned and the others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip() for row in rows)


def models(variants: Sequence[str], folder: Path = METRICS) -> str:
    """One row per model; then what metrics/comparison.json says of the three."""
    rows = [["model", "test acc %", "test loss", "train acc %", "gap", "peak test acc % (epoch)", "errors",
             "parameters"]]
    split = "test"
    for variant in variants:
        m = _read(folder / f"{variant}.json")
        split = m["split"]
        rows.append([m["label"], f"{m['test_acc']:.2f}", f"{m['test_loss']:.4f}", f"{m['train_acc']:.2f}",
                     f"{m['gap']:+.2f}", f"{m['peak_test_acc']:.2f} ({m['peak_epoch']})", str(m["errors"]),
                     f"{m['params']:,}"])
    if split != "test":
        rows[0] = [cell.replace("test", split) for cell in rows[0]]
    c = _read(folder / "comparison.json")
    return (f"{table(rows)}\n\nbest {split} accuracy: {c['best_test_acc']}; least overfit: {c['least_overfit']}; "
            f"most overfit: {c['most_overfit']}\n{split} images every model gets wrong: {c['errors_shared_by_all']}, "
            f"at least one model: {c['errors_in_any']}")


def mnist_c(path: Path = METRICS / "mnist_c.json") -> str:
    """Accuracy (%) per MNIST-C set (rows) and model (columns), then each model's mean corruption error."""
    scores = _read(path)
    series = list(scores)
    sets = [name for name in scores[series[0]] if name != "mean_corruption_error"]
    rows = [["MNIST-C set", *series], *([name, *(f"{scores[s][name]:.2f}" for s in series)] for name in sets)]
    rows.append(["mean corruption error", *(f"{scores[s]['mean_corruption_error']:.2f}" for s in series)])
    return f"MNIST-C: test accuracy (%) per set; the mean error over the 15 corruptions last\n{table(rows)}"


def study(path: Path = STUDY) -> str:
    """Test error (%) per series (rows) and images per device (columns)."""
    errors = _read(path)
    images = sorted({int(b) for by_images in errors.values() for b in by_images})
    rows = [["images per device", *map(str, images)]]
    for label, by_images in errors.items():
        cells = [by_images.get(str(b)) for b in images]
        rows.append([label, *(f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-" for c in cells)])
    seeds = {c["seeds"] for by_images in errors.values() for c in by_images.values()}
    return f"test error (%), mean ± std over {'/'.join(map(str, sorted(seeds)))} seeds\n{table(rows)}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", action="store_true", help="the per-device study instead of the three models")
    args = parser.parse_args(argv)
    if args.study:
        print(study())
        return
    variants = yaml.safe_load(Path("params.yaml").read_text())["variants"]
    print(models(list(variants)))
    if (METRICS / "mnist_c.json").is_file():
        print(f"\n{mnist_c()}")


if __name__ == "__main__":
    sys.exit(main())
