"""Stage `plot` of the batch-size study (studies/batch_size/dvc.yaml): test error against batch size.

Reads the result of every point (variant x batch size x seed, as `batch_study`
lists them) and writes one row per point for `dvc plots` (the template averages
the seeds and draws their spread), a matplotlib figure with one line per
variant and error bars over the seeds, and the mean and spread per point as
DVC metrics.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import typer
from matplotlib.figure import Figure

from src import cli, config
from src.files import Corrupt, read_input, save_figure, write_csv, write_json

app = cli.app(__doc__.split("\n")[0])
FIELDS = ("model", "batch_size", "seed", "test_error")


def result_name(variant: str, batch_size: int, seed: int) -> str:
    """The file of one point: the name DVC gives its matrix stage (`train@<variant>-<batch>-<seed>`)."""
    return f"{variant}-{batch_size}-{seed}.json"


def read_result(path: Path) -> dict:
    return read_input(path, f"train@{path.stem}", _parse_result)


def _parse_result(path: Path) -> dict:
    try:
        result = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise Corrupt("not valid JSON") from None
    if not isinstance(result, dict):
        raise Corrupt("it holds no result")
    for key in ("batch_size", "seed", "test_error", "epochs", "train_images"):
        if isinstance(result.get(key), bool) or not isinstance(result.get(key), (int, float)):
            raise Corrupt(f"its {key!r} is not a number")
    if not isinstance(result.get("label"), str):
        raise Corrupt("it names no model ('label')")
    return result


def summarize(results: Sequence[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """{model label: {batch size: {mean, std, seeds}}} of the test error in percent (std 0 for one seed)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in results:
        out.setdefault(r["label"], {}).setdefault(str(r["batch_size"]), []).append(r["test_error"])
    return {label: {b: {"mean": round(statistics.mean(v), 4),
                        "std": round(statistics.stdev(v), 4) if len(v) > 1 else 0.0, "seeds": len(v)}
                    for b, v in by_batch.items()}
            for label, by_batch in out.items()}


def draw_study(summary: Mapping[str, Mapping[str, Mapping[str, float]]], title: str) -> Figure:
    """Test error (%) against batch size on a log2 axis: one line per model, error bars of one std over seeds."""
    fig = Figure(figsize=(7, 4.4), layout="constrained")
    ax = fig.subplots()
    sizes: set[int] = set()
    for (label, by_batch), marker in zip(summary.items(), "osD^v"):
        batch = sorted(by_batch, key=int)
        sizes.update(int(b) for b in batch)
        ax.errorbar([int(b) for b in batch], [by_batch[b]["mean"] for b in batch],
                    yerr=[by_batch[b]["std"] for b in batch], marker=marker, markersize=5, capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
    seeds = max(p["seeds"] for by_batch in summary.values() for p in by_batch.values())
    ax.set(title=title, xlabel="batch size (learning rate scaled linearly with it)",
           ylabel=f"test error (%), mean ± std over {seeds} seed{'s' if seeds > 1 else ''}")
    ax.grid(alpha=0.3)
    ax.legend(title="model")
    return fig


@app.command(epilog=cli.settings("batch_study", "plot"))
def main(
    results: Annotated[Path, typer.Option(help="Folder of the points' result files.")],
    out: Annotated[Path, typer.Option(help="Folder for the plot data (CSV) and the figure (PNG).")],
    metrics: Annotated[Path, typer.Option(help="Metrics file: mean and std of the test error per point.")],
) -> None:
    """Gather the study's points (`batch_study`, `variants`) into plot data, a figure (at `plot.dpi`) and metrics."""
    params = config.load()
    study = config.section(params, "batch_study", config.BatchStudy)
    dpi = config.section(params, "plot", config.Plot).dpi
    points = [(v, b, s) for v in config.variants(params) for b in study.batch_sizes for s in study.seeds]
    found = [read_result(results / result_name(*p)) for p in points]
    write_csv(out / "test_error.csv", FIELDS, [[r["label"], *(r[k] for k in FIELDS[1:])] for r in found])
    summary = summarize(found)
    first = found[0]
    title = (f"Test error against batch size ({first['epochs']} epochs on {first['train_images']:,} "
             "training images)")
    save_figure(draw_study(summary, title), out / "test_error.png", dpi)
    write_json(metrics, summary)
    for label, by_batch in summary.items():
        cells = "  ".join(f"{b}: {p['mean']:.2f}±{p['std']:.2f}" for b, p in by_batch.items())
        print(f"{label:>8} test error (%) by batch size  {cells}")


if __name__ == "__main__":
    cli.main(app)
