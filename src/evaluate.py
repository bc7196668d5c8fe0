"""Stage `evaluate`: score the trained models and write metrics and plot data for DVC.

Writes, for every variant, `metrics/<variant>.json` (what `dvc metrics show`
lists) plus a comparison, and under `plots/` the per-epoch curves of all
variants side by side, confusion data, per-class accuracy and the list of
misclassified test images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
import typer

from src import cli, config
from src.checkpoint import load_models, trained_loader
from src.config import Loader, split_name
from src.data import DATASET_FILE, load_data
from src.engine import pick_device, predict, score
from src.files import Corrupt, atomic_dir, input_error, number, read_input, read_table, write_csv, write_json
from src.loader import input_stats

app = cli.app(__doc__.split("\n")[0])
CURVES = ("train/loss", "train/acc", "test/loss", "test/acc", "lr")


def read_history(live_dir: Path) -> dict[str, list[float]]:
    """Per-epoch values of each metric that the train stage logged with DVCLive; an error naming a missing or
    damaged log file (all must hold the same epochs, so that a log cut at the end of a line shows too)."""
    stage = f"train_{live_dir.name}"
    paths = {name: live_dir / "plots" / "metrics" / f"{name}.tsv" for name in CURVES}
    history = {name: read_input(path, stage, _parse_log) for name, path in paths.items()}
    epochs = max(len(values) for values in history.values())
    for name, values in history.items():
        if len(values) < epochs:
            problem = f"is corrupt (it logs fewer epochs than the others: {len(values)}, not {epochs})"
            raise input_error(paths[name], stage, problem)
    return history


def _parse_log(path: Path) -> list[float]:
    """The values of a DVCLive metric file (columns step and the metric's last name, one row per epoch)."""
    column = path.stem
    rows = read_table(path, delimiter="\t")
    if column not in rows[0] or "step" not in rows[0]:
        raise Corrupt(f"it has no columns step and {column}")
    if [r["step"] for r in rows] != [str(i) for i in range(len(rows))]:
        raise Corrupt("its steps are not 0, 1, 2, ...")
    return [number(r[column]) for r in rows]


def read_summary(live_dir: Path) -> dict:
    """The summary that the train stage's DVCLive run ends with (the final metrics and the parameter count)."""
    return read_input(live_dir / "metrics.json", f"train_{live_dir.name}", _parse_summary)


def _parse_summary(path: Path) -> dict:
    summary = json.loads(path.read_text())
    if not isinstance(summary, dict) or not isinstance(summary.get("params"), int):
        raise Corrupt("it holds no parameter count")
    return summary


def score_model(model, data, batch_size: int = 2000, loader: Loader = Loader.tensors) -> dict:
    """Scores of a trained model on the clean training and test sets, with its test predictions (on the CPU);
    `loader` is the one it was trained with, which decides how its input is standardized."""
    mean, std = input_stats(loader, data)
    run = lambda images: predict(model, images, mean, std, batch_size)  # noqa: E731
    train_loss, train_acc = score(run(data.train_images), data.train_labels)
    logits = run(data.test_images)
    test_loss, test_acc = score(logits, data.test_labels)
    probs = logits.softmax(1).cpu()
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss, "test_acc": test_acc,
            "pred": probs.argmax(1), "conf": probs.max(1).values}


def misclassified(pred: torch.Tensor, conf: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> list[dict]:
    """Every wrongly predicted test image, most confident mistakes first."""
    labels = labels.cpu()
    wrong = (pred != labels).nonzero().flatten()
    wrong = wrong[conf[wrong].argsort(descending=True)]
    return [{"index": int(i), "true": classes[int(labels[i])], "predicted": classes[int(pred[i])],
             "confidence": round(float(conf[i]), 4)} for i in wrong]


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> list[float]:
    """Test accuracy in percent for each true class."""
    return [float((pred[labels == c] == c).float().mean() * 100) for c in range(n_classes)]


def compare(summary: dict[str, dict]) -> dict[str, str]:
    """Which model has the best test accuracy, and the smallest and largest train-test gap."""
    def pick(fn, key):
        return summary[fn(summary, key=lambda v: summary[v][key])]["label"]

    return {"best_test_acc": pick(max, "test_acc"), "least_overfit": pick(min, "gap"),
            "most_overfit": pick(max, "gap")}


def error_overlap(preds: list[torch.Tensor], labels: torch.Tensor) -> dict[str, int]:
    """How many test images every model gets wrong, and how many at least one does: when the first is much
    smaller than each model's own count, the models fail on different images (run-to-run variance) rather
    than on digits none of them can read."""
    wrong = torch.stack([pred != labels for pred in preds])
    return {"errors_shared_by_all": int(wrong.all(0).sum()), "errors_in_any": int(wrong.any(0).sum())}


def _rounded(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


@app.command(epilog=cli.settings("evaluate"))
def main(
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    models: Annotated[Path, typer.Option(help="Folder of the trained models.")] = Path("models"),
    live: Annotated[Path, typer.Option(help="Folder of the DVCLive logs.")] = Path("dvclive"),
    metrics: Annotated[Path, typer.Option(help="Output folder for metrics JSON.")] = Path("metrics"),
    plots: Annotated[Path, typer.Option(help="Output folder for plot data.")] = Path("plots"),
) -> None:
    """Score every variant; write metrics, curves, confusion data and misclassified images.

    Settings: params.yaml's `evaluate`, `variants` and where to compute (`train.device`, `.threads`, `.precision`).
    """
    params = config.load()
    batch_size = config.section(params, "evaluate", config.Evaluate).batch_size
    variants = config.variants(params)
    compute = config.compute(params)
    dev = pick_device(compute.device, compute.threads, compute.precision)
    # Check every input before writing any output.
    histories = {v: read_history(live / v) for v in variants}
    for v in variants:
        read_summary(live / v)  # a training run that did not finish has none
    full = load_data(data)  # first: a damaged data file is named as such, not as other data than the models'
    loaded, validation = load_models(models, variants, data)
    split = split_name(validation)
    dataset = full.holdout(validation).to(dev)
    labels = dataset.test_labels.cpu()
    summary, per_class, preds, confusion, wrong = {}, {}, [], {}, {}
    for v, spec in variants.items():
        model, ckpt = loaded[v]
        r = score_model(model.to(dev), dataset, batch_size, trained_loader(ckpt))
        test_acc = histories[v]["test/acc"]
        peak = max(range(len(test_acc)), key=test_acc.__getitem__)
        summary[v] = _rounded({
            "label": spec.label, "split": split,  # what the test_* scores measure: test or validation
            "params": ckpt["params"],
            "test_acc": r["test_acc"], "test_loss": r["test_loss"],
            "train_acc": r["train_acc"], "train_loss": r["train_loss"],
            "gap": r["train_acc"] - r["test_acc"],  # > 0: fits seen data better than unseen data
            "train_acc_augmented": histories[v]["train/acc"][-1],
            "peak_test_acc": test_acc[peak], "peak_epoch": peak + 1, "epochs": len(test_acc),
            "errors": int((r["pred"] != labels).sum()),
        })
        write_json(metrics / f"{v}.json", summary[v])
        per_class[v] = per_class_accuracy(r["pred"], labels, len(dataset.classes))
        preds.append(r["pred"])
        confusion[v] = [(dataset.classes[a], dataset.classes[p]) for a, p in zip(labels.tolist(), r["pred"].tolist())]
        wrong[v] = misclassified(r["pred"], r["conf"], labels, dataset.classes)
        print(f"{spec.label:>8}: {split} {r['test_acc']:.2f}% (loss {r['test_loss']:.4f}), "
              f"train {r['train_acc']:.2f}%, gap {summary[v]['gap']:+.2f}, {summary[v]['errors']} errors")
    # Each folder is replaced as a whole, so that a variant no longer in params.yaml leaves no file behind.
    with atomic_dir(plots / "confusion") as folder:
        for v, rows in confusion.items():
            write_csv(folder / f"{v}.csv", ["actual", "predicted"], rows)
    with atomic_dir(plots / "misclassified") as folder:
        for v, items in wrong.items():
            write_json(folder / f"{v}.json", items)
    columns = ["epoch", *(spec.label for spec in variants.values())]
    with atomic_dir(plots / "curves") as folder:
        for name in CURVES:
            n_epochs = max(len(h[name]) for h in histories.values())
            rows = [[e + 1, *(h[name][e] if e < len(h[name]) else "" for h in histories.values())]
                    for e in range(n_epochs)]
            write_csv(folder / f"{name.replace('/', '_')}.csv", columns, rows)
    write_csv(plots / "per_class_accuracy.csv", ["class", *columns[1:]],
              [[name, *(round(per_class[v][c], 2) for v in variants)] for c, name in enumerate(dataset.classes)])
    comparison = {**compare(summary), **error_overlap(preds, labels)}
    write_json(metrics / "comparison.json", comparison)
    print(f"best test accuracy: {comparison['best_test_acc']}; least overfitting: {comparison['least_overfit']}; "
          f"most overfitting: {comparison['most_overfit']}; test images wrong in every model: "
          f"{comparison['errors_shared_by_all']}, in at least one: {comparison['errors_in_any']}")


if __name__ == "__main__":
    cli.main(app)
