"""Stage `shift`: score every trained model on transformed copies of the test set; no training.

BatchNorm normalizes with running statistics fixed in training, GroupNorm and LayerNorm with each image's own. Every
3x3 convolution is weight-standardized (each filter sums to zero) and the first has no padding, so a constant added
to every pixel vanishes in the first convolution for all three norms, and scaling every pixel by a > 0 scales each
feature map after it, which GN and LN divide out per image and BN does not. The unclipped contrast and brightness
shifts test exactly that (they make values no 8-bit image holds); every other shift is rounded and clipped to 0-255.
A model with BatchNorm is scored a second time with test statistics (src/adapt.py): its statistics re-estimated on
each shifted set as a whole, as GN and LN estimate theirs on each image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
import torchvision.transforms.functional as TF
import typer
from torch import nn

from src import adapt, cli, config
from src.checkpoint import load_models, trained_loader
from src.data import DATASET_FILE, load_data
from src.engine import pick_device
from src.files import write_csv, write_json
from src.loader import input_stats

app = cli.app(__doc__.split("\n")[0])
Transform = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]  # (images, severity, noise) -> images


@dataclass(frozen=True)
class Kind:
    """One kind of shift: its panel title (with the severity's unit), the severity that changes nothing, and the
    transform of float pixel values in 0-255; `clip` rounds and clips the result to 0-255, as an 8-bit image."""

    title: str
    clean: float
    transform: Transform
    clip: bool = True


def _rotate(x: torch.Tensor, degrees: float, noise: torch.Tensor) -> torch.Tensor:
    out = x.clone()  # every other image turned the other way: rotation both ways, as in training
    out[0::2] = TF.rotate(x[0::2], degrees, TF.InterpolationMode.BILINEAR)
    out[1::2] = TF.rotate(x[1::2], -degrees, TF.InterpolationMode.BILINEAR)
    return out


def _blur(x: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(x, [size, size], [sigma, sigma]) if sigma > 0 else x


# The keys of params.yaml's `shift` section, in the order of the panels.
KINDS: dict[str, Kind] = {
    "contrast": Kind("contrast: pixels × a, clipped", 1.0, lambda x, a, _: x * a),
    "contrast_unclipped": Kind("contrast: pixels × a, not clipped", 1.0, lambda x, a, _: x * a, clip=False),
    "brightness": Kind("brightness: pixels + b × 255, clipped", 0.0, lambda x, b, _: x + b * 255),
    "brightness_unclipped": Kind("brightness: pixels + b × 255, not clipped", 0.0, lambda x, b, _: x + b * 255,
                                 clip=False),
    "noise": Kind("Gaussian noise: std s × 255", 0.0, lambda x, s, noise: x + s * 255 * noise),
    "blur": Kind("Gaussian blur: std (pixels)", 0.0, _blur),
    "rotation": Kind("rotation (degrees; training: up to 7)", 0.0, _rotate),
    "invert": Kind("inversion: (1 - t) x + t (255 - x)", 0.0, lambda x, t, _: (1 - t) * x + t * (255 - x)),
}


def shifted(images: torch.Tensor, kind: Kind, severity: float, noise: torch.Tensor) -> torch.Tensor:
    """`images` (uint8) under `kind` at `severity`: uint8 again if the kind clips, else float pixel values."""
    x = kind.transform(images.float(), severity, noise)
    return x.round().clamp(0, 255).to(torch.uint8) if kind.clip else x


def score_shifts(models: Mapping[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, mean: float,
                 std: float, severities: Mapping[str, Sequence[float]], seed: int = 0,
                 batch_size: int = 2000) -> list[dict]:
    """Accuracy of each model (by label) on each kind of shift at its clean severity and at each of `severities`
    (kind -> values): rows of model, shift (the kind's key), severity and accuracy. A model with BatchNorm is
    scored a second time with each set's own statistics (`adapt.series`). The noise is one draw of `seed` for
    every severity and model."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    runs = adapt.series(models)
    clean = {label: adapt.accuracy(m, images, labels, mean, std, batch_size, test) for label, (m, test) in runs.items()}
    rows = []
    for key, values in severities.items():
        kind = KINDS[key]
        for severity in [kind.clean, *values]:
            x = shifted(images, kind, severity, noise) if severity != kind.clean else None
            for label, (model, test) in runs.items():
                acc = clean[label] if x is None else adapt.accuracy(model, x, labels, mean, std, batch_size, test)
                rows.append({"model": label, "shift": key, "severity": severity, "accuracy": round(acc, 2)})
    return rows


@app.command(epilog=cli.settings("shift"))
def main(
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    models: Annotated[Path, typer.Option(help="Folder of the trained models.")] = Path("models"),
    metrics: Annotated[Path, typer.Option(help="Metrics file: accuracy per model, shift and severity.")] = Path(
        "metrics/shift.json"),
    plots: Annotated[Path, typer.Option(help="Plot data: one row per model, shift and severity.")] = Path(
        "plots/shift.csv"),
) -> None:
    """Score every variant on shifted copies of the test set (params.yaml's `shift`: severities per kind)."""
    params = config.load()
    settings = config.section(params, "shift", config.Shift)
    batch_size = config.section(params, "evaluate", config.Evaluate).batch_size
    variants = config.variants(params)
    compute = config.compute(params)
    dev = pick_device(compute.device, compute.threads, compute.precision)
    full = load_data(data)
    loaded, validation = load_models(models, variants, data)
    dataset = full.holdout(validation).to(dev)
    start = time.perf_counter()
    nets = {variants[v].label: model.to(dev) for v, (model, _) in loaded.items()}
    mean, std = input_stats(trained_loader(next(iter(loaded.values()))[1]), dataset)  # the same for all: load_models
    rows = score_shifts(nets, dataset.test_images, dataset.test_labels, mean, std,
                        settings.severities(), settings.seed, batch_size)
    keys = {label: v for v, spec in variants.items() for label, v in
            ((spec.label, v), (spec.label + adapt.TEST_STATISTICS, f"{v}_test_statistics"))}
    by_model: dict[str, dict] = {}
    for r in rows:
        by_model.setdefault(keys[r["model"]], {}).setdefault(r["shift"], {})[f"{r['severity']:g}"] = r["accuracy"]
    write_json(metrics, by_model)
    write_csv(plots, ["model", "shift", "severity", "accuracy"],
              [[r["model"], KINDS[r["shift"]].title, r["severity"], r["accuracy"]] for r in rows])
    print(format_table(rows, list(dict.fromkeys(r["model"] for r in rows))))
    series = len({r["model"] for r in rows})
    print(f"scored {len(nets)} models ({series} series) on {len(rows) // series} test sets in "
          f"{time.perf_counter() - start:.0f}s -> {metrics}, {plots}")


def format_table(rows: Sequence[Mapping], labels: Sequence[str]) -> str:
    """Accuracy per shift and severity (rows) and model (columns)."""
    acc = {(r["shift"], r["severity"], r["model"]): r["accuracy"] for r in rows}
    keys = list(dict.fromkeys((r["shift"], r["severity"]) for r in rows))
    width = {label: max(9, len(label) + 2) for label in labels}
    lines = [f"{'shift':<22}{'severity':>9}" + "".join(f"{label:>{width[label]}}" for label in labels)]
    for key, severity in keys:
        lines.append(f"{key:<22}{severity:>9g}"
                     + "".join(f"{acc[key, severity, label]:>{width[label]}.2f}" for label in labels))
    return "\n".join(lines)


if __name__ == "__main__":
    cli.main(app)
