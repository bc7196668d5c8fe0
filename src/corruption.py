"""Stage `mnist_c`: score every trained model on MNIST-C, the MNIST test set under 15 corruptions; no training.

MNIST-C (Mu & Gilmer 2019) is the public robustness benchmark of MNIST: shot and impulse noise, glass and motion
blur, shear, scale, rotate, brightness, translate, stripe, fog, spatter, dotted line, zigzag and canny edges, each
at the one severity the benchmark fixes, and `identity`, the clean test set. Each model's mean corruption error is
the mean of its 15 test errors (identity excluded). A model with BatchNorm is scored a second time with test
statistics (src/adapt.py): its statistics re-estimated on each corrupted set as a whole.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer
from torch import nn

from src import adapt, cli, config
from src.checkpoint import load_models, trained_loader
from src.data import DATASET_FILE, load_data
from src.engine import pick_device
from src.files import write_csv, write_json
from src.loader import input_stats
from src.mnist_c import CORRUPTIONS, MNIST_C_FILE, Set, load_mnist_c

app = cli.app(__doc__.split("\n")[0])


def score_corruptions(models: Mapping[str, nn.Module], sets: Mapping[str, Set], mean: float, std: float,
                      batch_size: int = 2000) -> list[dict]:
    """Accuracy in % (not rounded) of each series (`adapt.series`: each model, then each BatchNorm model again with
    test statistics) on each set: rows of model (the series' label), corruption and accuracy, in the order of `sets`."""
    rows = []
    for label, (model, test) in adapt.series(models).items():
        for name, (images, labels) in sets.items():
            acc = adapt.accuracy(model, images, labels, mean, std, batch_size, test)
            rows.append({"model": label, "corruption": name, "accuracy": acc})
    return rows


def mean_corruption_error(rows: Sequence[Mapping]) -> dict[str, float]:
    """Each series' mean corruption error in %: the mean over the 15 corruptions (identity excluded) of 100 minus the
    accuracy (Mu & Gilmer's mean test error; not normalized by a baseline model as ImageNet-C's mCE is)."""
    accuracy = {(r["model"], r["corruption"]): r["accuracy"] for r in rows}
    errors = {}
    for series in dict.fromkeys(r["model"] for r in rows):
        lacking = [c for c in CORRUPTIONS if (series, c) not in accuracy]
        if lacking:
            raise ValueError(f"series {series!r} has no accuracy on {', '.join(lacking)}")
        errors[series] = sum(100 - accuracy[series, c] for c in CORRUPTIONS) / len(CORRUPTIONS)
    return errors


@app.command(epilog=cli.settings("evaluate"))
def main(
    mnist_c: Annotated[Path, typer.Option(help="MNIST-C file from the download_mnist_c stage.")] = MNIST_C_FILE,
    data: Annotated[Path, typer.Option(help="Dataset file the models were trained on (its input statistics).")] = (
        DATASET_FILE),
    models: Annotated[Path, typer.Option(help="Folder of the trained models.")] = Path("models"),
    metrics: Annotated[Path, typer.Option(help="Metrics file: accuracy per series and set, mean corruption error.")] = (
        Path("metrics/mnist_c.json")),
    plots: Annotated[Path, typer.Option(help="Plot data: one row per series and set.")] = Path("plots/mnist_c.csv"),
) -> None:
    """Score every variant on each MNIST-C set; BatchNorm variants also with test statistics."""
    params = config.load()
    batch_size = config.section(params, "evaluate", config.Evaluate).batch_size
    variants = config.variants(params)
    compute = config.compute(params)
    dev = pick_device(compute.device, compute.threads, compute.precision)
    full = load_data(data)
    sets = {name: (images.to(dev), labels.to(dev)) for name, (images, labels) in load_mnist_c(mnist_c).items()}
    loaded, validation = load_models(models, variants, data)
    start = time.perf_counter()
    nets = {variants[v].label: model.to(dev) for v, (model, _) in loaded.items()}
    # The standardization each model was trained with (the same for all: load_models checks it).
    mean, std = input_stats(trained_loader(next(iter(loaded.values()))[1]), full.holdout(validation))
    rows = score_corruptions(nets, sets, mean, std, batch_size)
    mce = mean_corruption_error(rows)
    keys = {label: v for v, spec in variants.items() for label, v in
            ((spec.label, v), (spec.label + adapt.TEST_STATISTICS, f"{v}_test_statistics"))}
    summary: dict[str, dict] = {}
    for series, error in mce.items():
        summary[keys[series]] = {"mean_corruption_error": round(error, 2),
                                 **{r["corruption"]: round(r["accuracy"], 2) for r in rows if r["model"] == series}}
    write_json(metrics, summary)
    write_csv(plots, ["model", "corruption", "accuracy"],
              [[r["model"], r["corruption"], round(r["accuracy"], 2)] for r in rows])
    print(format_table(rows, mce))
    print(f"scored {len(mce)} series on {len(sets)} sets in {time.perf_counter() - start:.0f}s -> {metrics}, {plots}")


def format_table(rows: Sequence[Mapping], mce: Mapping[str, float]) -> str:
    """Accuracy per set (rows) and series (columns), then each series' mean corruption error."""
    acc = {(r["model"], r["corruption"]): r["accuracy"] for r in rows}
    width = {s: max(9, len(s) + 2) for s in mce}
    lines = [f"{'set':<15}" + "".join(f"{s:>{width[s]}}" for s in mce)]
    for name in dict.fromkeys(r["corruption"] for r in rows):
        lines.append(f"{name:<15}" + "".join(f"{acc[s, name]:>{width[s]}.2f}" for s in mce))
    lines.append(f"{'mean error':<15}" + "".join(f"{e:>{width[s]}.2f}" for s, e in mce.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    cli.main(app)
