"""Stage `plot` of the per-device study (studies/per_device/dvc.yaml): test error against images per device.

Reads every point's result (the BatchNorm variant at each `per_device.images` and seed, one process; each variant
of `per_device.ddp` as real DDP processes) and, for one device (the whole batch of `train.batch_size` images),
the seed table's rows of the shipped recipe (results/seeds.csv, `make seeds`) at the same seeds. Writes one row
per point for `dvc plots` (the template averages the seeds and draws their spread), a matplotlib figure, and the
mean and spread per point as DVC metrics.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer
from matplotlib.figure import Figure

from src import cli, config
from src.errors import UserError
from src.files import Corrupt, read_input, save_figure, write_csv, write_json

app = cli.app(__doc__.split("\n")[0])
FIELDS = ("model", "images", "seed", "test_error")
RECIPE = "ours"  # the seed table's name for the shipped recipe


def ddp_label(label: str, processes: int) -> str:
    """The series of a variant trained as real DDP processes."""
    return f"{label}, {processes} DDP processes"


def read_result(path: Path) -> dict:
    stage = f"ddp@{path.stem.removeprefix('ddp-')}" if path.stem.startswith("ddp-") else f"train@{path.stem}"
    return read_input(path, stage, _parse_result)


def _parse_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Corrupt("not valid JSON") from None
    if not isinstance(result, dict):
        raise Corrupt("it holds no result")
    for key in ("images", "processes", "seed", "test_error"):
        if isinstance(result.get(key), bool) or not isinstance(result.get(key), (int, float)):
            raise Corrupt(f"its {key!r} is not a number")
    if not isinstance(result.get("label"), str):
        raise Corrupt("it names no model ('label')")
    return result


def one_device(seeds_csv: Path, variants: Mapping[str, config.Variant], seeds: Sequence[int],
               batch_size: int) -> list[dict]:
    """The seed table's test errors of the shipped recipe for each variant and seed: the whole batch on one
    device."""
    def parse(path: Path) -> dict[tuple[str, int], float]:
        try:
            rows = list(csv.DictReader(path.read_text().splitlines()))
            return {(r["variant"], int(r["seed"])): float(r["test_acc"]) for r in rows if r["recipe"] == RECIPE}
        except (KeyError, ValueError, TypeError, UnicodeDecodeError, csv.Error):
            raise Corrupt("not a seed table (recipe, variant, seed, test_acc, ...)") from None

    table = read_input(seeds_csv, "make seeds", parse)
    rows = []
    for name, spec in variants.items():
        for seed in seeds:
            if (name, seed) not in table:
                raise UserError(f"{seeds_csv} has no row of recipe {RECIPE}, variant {name}, seed {seed}",
                                hint=f"run `make seeds SEEDS={seed}` to add it")
            rows.append({"label": spec.label, "images": batch_size, "seed": seed,
                         "test_error": round(100 - table[name, seed], 4)})
    return rows


def summarize(results: Sequence[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """{series: {images per device: {mean, std, seeds}}} of the test error in percent (std 0 for one seed)."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        out.setdefault(r["label"], {}).setdefault(str(r["images"]), []).append(r["test_error"])
    return {label: {b: {"mean": round(statistics.mean(v), 4),
                        "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0, "seeds": len(v)}
                    for b, v in sorted(by_images.items(), key=lambda item: int(item[0]))}
            for label, by_images in out.items()}


def draw_study(summary: Mapping[str, Mapping[str, Mapping[str, float]]], studied: str, ddp: Sequence[str],
               title: str) -> Figure:
    """Test error (%) against images per device on a log2 axis: the studied variant's line with error bars of one
    std over seeds; every other variant's one-device mean ± std as a band across the axis; the DDP points hollow."""
    fig = Figure(figsize=(7.4, 4.6), layout="constrained")
    ax = fig.subplots()
    images = sorted({int(b) for by_images in summary.values() for b in by_images})
    colours = dict(zip([label for label in summary if label not in ddp], ("C0", "C1", "C2", "C3", "C4")))
    for label, by_images in summary.items():
        if label in ddp:
            continue
        points = sorted(by_images, key=int)
        mean, std = by_images[points[-1]]["mean"], by_images[points[-1]]["std"]
        if label == studied:
            ax.errorbar([int(b) for b in points], [by_images[b]["mean"] for b in points],
                        yerr=[by_images[b]["std"] for b in points], marker="o", markersize=5, capsize=3,
                        color=colours[label], label=f"{label}, one process")
        else:
            ax.axhspan(mean - std, mean + std, color=colours[label], alpha=0.15, lw=0)
            ax.axhline(mean, color=colours[label], lw=1.5, label=f"{label}, one device ({points[-1]} images)")
    for label in ddp:
        base = next(name for name in colours if label.startswith(f"{name}, "))
        for b, p in summary.get(label, {}).items():
            ax.plot([int(b)], [p["mean"]], marker="D", markersize=8, markerfacecolor="none", markeredgewidth=1.6,
                    color=colours[base], ls="none", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(images, [str(b) for b in images])
    seeds = max(p["seeds"] for label, by_images in summary.items() if label not in ddp for p in by_images.values())
    ax.set(title=title, xlabel="images per device: BatchNorm's statistics (the batch of 128 split evenly)",
           ylabel=f"test error (%), mean ± std over {seeds} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


@app.command(epilog=cli.settings("per_device", "plot"))
def main(
    results: Annotated[Path, typer.Option(help="Folder of the points' result files.")],
    seeds: Annotated[Path, typer.Option(help="The seed table (results/seeds.csv): the one-device points.")],
    out: Annotated[Path, typer.Option(help="Folder for the plot data (CSV) and the figure (PNG).")],
    metrics: Annotated[Path, typer.Option(help="Metrics file: mean and std of the test error per point.")],
) -> None:
    """Gather the study's points (`per_device`) and the one-device seeds into plot data, a figure and metrics."""
    params = config.load()
    study = config.section(params, "per_device", config.PerDevice)
    variants = config.variants(params)
    batch_size = config.run(params, study.variant).train.batch_size
    dpi = config.section(params, "plot", config.Plot).dpi
    for name in (study.variant, *study.ddp):
        if name not in variants:
            raise UserError(f"params.yaml: per_device names the variant {name!r}, which variants lacks",
                            hint=f"the variants are: {', '.join(variants)}")
    found = [read_result(results / f"{b}-{s}.json") for b in study.images for s in study.seeds]
    found += one_device(seeds, variants, study.seeds, batch_size)
    ddp = [{**r, "label": ddp_label(r["label"], r["processes"])}
           for r in (read_result(results / f"ddp-{v}-{s}.json") for v in study.ddp for s in study.ddp_seeds)]
    rows = found + ddp
    write_csv(out / "test_error.csv", FIELDS, [[r["label"], *(r[k] for k in FIELDS[1:])] for r in rows])
    summary = summarize(rows)
    studied = variants[study.variant].label
    title = f"{studied}: test error against images per device (batch {batch_size}, the run of record's recipe)"
    save_figure(draw_study(summary, studied, sorted({r["label"] for r in ddp}), title), out / "test_error.png", dpi)
    write_json(metrics, summary)
    for label, by_images in summary.items():
        cells = "  ".join(f"{b}: {p['mean']:.2f}±{p['std']:.2f}" for b, p in by_images.items())
        print(f"{label:>26}  test error (%) by images per device  {cells}")


if __name__ == "__main__":
    cli.main(app)
