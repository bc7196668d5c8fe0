"""Stage `plot`: draw the comparison figures as PNG files with matplotlib.

Graph 1 and 2 overlay the per-epoch test loss and test accuracy of all variants; `shift.png` their accuracy on
shifted test images (the shift stage's), `mnist_c.png` their test error on MNIST-C (the mnist_c stage's); one
figure per variant shows ten misclassified test images. The drawing functions take plain data, so the notebook
calls them too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from src import cli, config
from src.data import DATASET_FILE, load_data
from src.files import Corrupt, atomic_dir, number, read_input, read_table, save_figure

app = cli.app(__doc__.split("\n")[0])


def draw_curves(curves: Mapping[str, Sequence[float]], title: str, ylabel: str, zoom: int = 10) -> Figure:
    """One line per model over epochs 1..N, legend by model name.

    Runs of at least 2 * `zoom` epochs get an inset of the last `zoom` epochs, where the
    models differ by tenths of a percent that the full scale hides.
    """
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    n = max(len(v) for v in curves.values())
    inset = ax.inset_axes([0.35, 0.3, 0.45, 0.42]) if n >= 2 * zoom else None
    for (label, values), marker in zip(curves.items(), "osD^v"):
        epochs = range(1, len(values) + 1)
        ax.plot(epochs, values, marker=marker, markersize=4, label=label)
        if inset is not None:
            inset.plot(epochs[-zoom:], values[-zoom:], marker=marker, markersize=3)
    if inset is not None:
        inset.set_title(f"last {zoom} epochs", fontsize=8)
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
        inset.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(title="model", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def draw_misclassified(
    images: np.ndarray, items: Sequence[Mapping], title: str, rows: int = 2, cols: int = 5
) -> Figure:
    """A rows x cols grid of misclassified images, each captioned with true and predicted label."""
    fig = Figure(figsize=(1.9 * cols, 2.3 * rows + 0.4), layout="constrained")
    fig.suptitle(title, fontsize=13)
    for ax, item in zip(fig.subplots(rows, cols).flat, [*items[: rows * cols], *[None] * (rows * cols)]):
        ax.set_axis_off()
        if item is None:
            continue
        ax.imshow(images[item["index"]], cmap="gray_r", vmin=0, vmax=255)
        labels = f"true {item['true']}, pred {item['predicted']}"
        if len(labels) > 24:  # long class names (Fashion-MNIST): one line each, or they overlap
            labels = f"true {item['true']}\npred {item['predicted']}"
        ax.set_title(f"{labels}\nconf {item['confidence'] * 100:.1f}%  #{item['index']}", fontsize=9)
    return fig


def _parse_curves(path: Path) -> dict[str, list[float]]:
    rows = read_table(path)
    models = [k for k in rows[0] if k != "epoch"]
    if next(iter(rows[0])) != "epoch" or not models:
        raise Corrupt("its header is not epoch and one column per model")
    if [r["epoch"] for r in rows] != [str(e) for e in range(1, len(rows) + 1)]:
        raise Corrupt("its epochs are not 1, 2, 3, ...")
    curves = {}
    for m in models:
        cells = [r[m] for r in rows]
        while cells and cells[-1] == "":  # a model trained for fewer epochs than the others
            cells.pop()
        curves[m] = [number(c) for c in cells]
    return curves


def _is_mistake(item: object) -> bool:
    """One entry of the misclassified list: test-set index, true and predicted class, confidence in [0, 1]."""
    return (isinstance(item, dict) and type(item.get("index")) is int and item["index"] >= 0
            and isinstance(item.get("true"), str) and isinstance(item.get("predicted"), str)
            and isinstance(item.get("confidence"), (int, float)) and 0 <= item["confidence"] <= 1)


def _parse_misclassified(path: Path) -> list[dict]:
    items = json.loads(path.read_text())
    if not isinstance(items, list) or not all(map(_is_mistake, items)):
        raise Corrupt("it is not a list of images with index, true and predicted class and confidence")
    return items


def draw_shift(rows: Sequence[Mapping], title: str = "Accuracy on shifted test images", cols: int = 4) -> Figure:
    """One panel per kind of shift (rows' `shift`, in their order): accuracy against severity, a line per model."""
    shifts = list(dict.fromkeys(r["shift"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    n_rows = -(-len(shifts) // cols)
    fig = Figure(figsize=(3.3 * cols, 2.7 * n_rows + 0.6), layout="constrained")
    fig.suptitle(title, fontsize=13)
    axes = fig.subplots(n_rows, cols, sharey=True, squeeze=False).flat
    for ax, kind in zip(axes, shifts):
        for model, marker in zip(models, "osD^v"):
            points = sorted((float(r["severity"]), float(r["accuracy"])) for r in rows
                            if r["shift"] == kind and r["model"] == model)
            ax.plot(*zip(*points), marker=marker, markersize=4, label=model)
        ax.set_title(kind, fontsize=9)
        ax.set(ylim=(0, 100), xlabel="severity")
        ax.grid(alpha=0.3)
    for ax in axes:  # the panels left over
        ax.set_axis_off()
    for row in fig.axes[::cols]:
        row.set_ylabel("test accuracy (%)")
    fig.legend(*fig.axes[0].get_legend_handles_labels(), title="model", loc="outside right upper")
    return fig


def read_shift(path: Path) -> list[dict[str, str]]:
    """The shift stage's rows: model, shift, severity, accuracy."""
    return read_input(path, "shift", _parse_shift)


def _parse_shift(path: Path) -> list[dict[str, str]]:
    rows = read_table(path)
    if set(rows[0]) != {"model", "shift", "severity", "accuracy"}:
        raise Corrupt("it has no columns model, shift, severity and accuracy")
    for r in rows:  # each a number, or an error naming the file
        number(r["severity"])
        number(r["accuracy"])
    return rows


def draw_mnist_c(rows: Sequence[Mapping], title: str = "MNIST-C: test error per corruption") -> Figure:
    """Test error per MNIST-C set (rows' `corruption`, in their order, `identity` the clean set) as bars grouped by
    set, one colour per model (its mean corruption error, identity excluded, in the legend)."""
    sets = list(dict.fromkeys(r["corruption"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    error = {(r["model"], r["corruption"]): 100 - float(r["accuracy"]) for r in rows}
    fig = Figure(figsize=(9, 0.42 * len(sets) * max(1, len(models) / 3) + 1.2), layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(models)
    for i, model in enumerate(models):
        values = [error[model, s] for s in sets]
        mce = np.mean([error[model, s] for s in sets if s != "identity"])
        ax.barh(np.arange(len(sets)) + (i - (len(models) - 1) / 2) * height, values, height,
                label=f"{model} (mean corruption error {mce:.2f}%)")
    ax.set_yticks(np.arange(len(sets)), [s.replace("_", " ") for s in sets])
    ax.invert_yaxis()  # the clean set on top, the corruptions in the benchmark's order below
    ax.set(title=title, xlabel="test error (%)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), title="model", loc="outside lower center", ncols=2, fontsize=8)
    return fig


def read_mnist_c(path: Path) -> list[dict[str, str]]:
    """The mnist_c stage's rows: model, corruption, accuracy."""
    return read_input(path, "mnist_c", _parse_mnist_c)


def _parse_mnist_c(path: Path) -> list[dict[str, str]]:
    rows = read_table(path)
    if set(rows[0]) != {"model", "corruption", "accuracy"}:
        raise Corrupt("it has no columns model, corruption and accuracy")
    for r in rows:
        number(r["accuracy"])
    return rows


def read_curves(path: Path) -> dict[str, list[float]]:
    """A wide curves CSV (epoch, one column per model) -> {model: values}."""
    return read_input(path, "evaluate", _parse_curves)


def read_misclassified(path: Path) -> list[dict]:
    """The evaluate stage's list of misclassified test images."""
    return read_input(path, "evaluate", _parse_misclassified)


@app.command(epilog=cli.settings("plot"))
def main(
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    plots: Annotated[Path, typer.Option(help="Folder of the evaluate stage's plot data.")] = Path("plots"),
    out: Annotated[Path, typer.Option(help="Output folder for the PNG figures.")] = Path("plots/images"),
) -> None:
    """Draw Graph 1 (test loss), Graph 2 (test accuracy), the shift panels, the MNIST-C bars and a misclassified
    grid per model (at `plot.dpi`)."""
    params = config.load()
    dpi = config.section(params, "plot", config.Plot).dpi
    variants = config.variants(params)
    test_images = load_data(data).test_images.squeeze(1).numpy()
    figures = {
        "test_loss.png": draw_curves(read_curves(plots / "curves" / "test_loss.csv"),
                                     "Graph 1: test loss per epoch", "test loss (mean cross-entropy)"),
        "test_accuracy.png": draw_curves(read_curves(plots / "curves" / "test_acc.csv"),
                                         "Graph 2: test accuracy per epoch", "test accuracy (%)"),
    }
    figures["shift.png"] = draw_shift(read_shift(plots / "shift.csv"))
    figures["mnist_c.png"] = draw_mnist_c(read_mnist_c(plots / "mnist_c.csv"))
    for v, spec in variants.items():
        items = read_misclassified(plots / "misclassified" / f"{v}.json")
        figures[f"misclassified_{v}.png"] = draw_misclassified(
            test_images, items, f"{spec.label}: 10 misclassified test images (of {len(items)})")
    with atomic_dir(out) as folder:  # replaced as a whole: no figure of a variant that is gone stays behind
        for name, fig in figures.items():
            save_figure(fig, folder / name, dpi)
    print(f"wrote {len(figures)} figures to {out}/")


if __name__ == "__main__":
    cli.main(app)
