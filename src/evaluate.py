"""Stage `evaluate`: score the trained models and write metrics and plot data for DVC.

Writes, for every variant, `metrics/<variant>.json` (what `dvc metrics show`
lists) plus a comparison, and under `plots/` the per-epoch curves of all
variants side by side, confusion data, per-class accuracy and the list of
misclassified test images.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated

import torch
import typer

from src import cli
from src.checkpoint import load_checkpoint
from src.data import DATASET_FILE, load_data
from src.engine import pick_device, predict, score
from src.errors import UserError
from src.files import write_csv, write_json
from src.params import get_key, load_params

app = cli.app(__doc__.split("\n")[0])
CURVES = ("train/loss", "train/acc", "test/loss", "test/acc", "lr")


def read_history(live_dir: Path) -> dict[str, list[float]]:
    """Per-epoch values of each metric that the train stage logged with DVCLive."""
    history = {}
    for name in CURVES:
        path = live_dir / "plots" / "metrics" / f"{name}.tsv"
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            history[name] = [float(r[name.split("/")[-1]]) for r in rows]
        except (OSError, KeyError, ValueError):
            raise UserError(f"{path} is missing or corrupt; the train stage writes it",
                            hint="run `dvc repro` to train again") from None
    return history


def evaluate_variant(variant: str, norm: str, model_path: Path, data, device, batch_size: int) -> dict:
    """Final scores of one model on the clean training and test sets, plus its predictions."""
    model, ckpt = load_checkpoint(model_path, stage=f"train_{variant}")
    if model.cfg.norm != norm:
        raise UserError(f"{model_path} holds a {model.cfg.norm} model but params.yaml says variants.{variant}.norm "
                        f"is {norm}", hint=f"run `dvc repro train_{variant}`")
    model.to(device)
    run = lambda images: predict(model, images, data.mean, data.std, batch_size)  # noqa: E731
    train_loss, train_acc = score(run(data.train_images), data.train_labels)
    logits = run(data.test_images)
    test_loss, test_acc = score(logits, data.test_labels)
    probs = logits.softmax(1).cpu()
    return {"ckpt": ckpt, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc, "pred": probs.argmax(1), "conf": probs.max(1).values}


@app.command()
def main(
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")],
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    models: Annotated[Path, typer.Option(help="Folder of the trained models.")] = Path("models"),
    live: Annotated[Path, typer.Option(help="Folder of the DVCLive logs.")] = Path("dvclive"),
    metrics: Annotated[Path, typer.Option(help="Output folder for metrics JSON.")] = Path("metrics"),
    plots: Annotated[Path, typer.Option(help="Output folder for plot data.")] = Path("plots"),
) -> None:
    """Score every variant; write metrics, curves, confusion data and misclassified images."""
    if batch_size < 1:
        raise UserError(f"evaluate.batch_size must be >= 1 (got {batch_size})")
    variants = get_key(load_params(), "variants")
    dev = pick_device(device)
    dataset = load_data(data).to(dev)
    labels = dataset.test_labels.cpu()
    histories = {v: read_history(live / v) for v in variants}
    summary, per_class = {}, {}
    for v, spec in variants.items():
        r = evaluate_variant(v, spec["norm"], models / f"{v}.pt", dataset, dev, batch_size)
        test_acc = histories[v]["test/acc"]
        best = max(range(len(test_acc)), key=test_acc.__getitem__)
        summary[v] = {
            "label": spec["label"], "norm": spec["norm"], "params": r["ckpt"]["params"],
            "test_acc": r["test_acc"], "test_loss": r["test_loss"],
            "train_acc": r["train_acc"], "train_loss": r["train_loss"],
            "gap": r["train_acc"] - r["test_acc"],  # > 0: fits the training set better than unseen data
            "train_acc_augmented": histories[v]["train/acc"][-1],
            "best_test_acc": test_acc[best], "best_epoch": best + 1, "epochs": len(test_acc),
            "train_seconds": r["ckpt"]["train_seconds"],
            "seconds_per_epoch": r["ckpt"]["train_seconds"] / len(test_acc),
            "errors": int((r["pred"] != labels).sum()),
        }
        write_json(metrics / f"{v}.json", summary[v])
        per_class[v] = [float((r["pred"][labels == c] == c).float().mean() * 100) for c in range(len(dataset.classes))]
        names = [dataset.classes[i] for i in range(len(dataset.classes))]
        write_csv(plots / "confusion" / f"{v}.csv", ["actual", "predicted"],
                  [(names[a], names[p]) for a, p in zip(labels.tolist(), r["pred"].tolist())])
        wrong = (r["pred"] != labels).nonzero().flatten()
        wrong = wrong[r["conf"][wrong].argsort(descending=True)]  # most confident mistakes first
        write_json(plots / "misclassified" / f"{v}.json", [
            {"index": int(i), "true": names[int(labels[i])], "predicted": names[int(r["pred"][i])],
             "confidence": round(float(r["conf"][i]), 4)} for i in wrong])
        print(f"{spec['label']:>8}: test {r['test_acc']:.2f}% (loss {r['test_loss']:.4f}), "
              f"train {r['train_acc']:.2f}%, gap {summary[v]['gap']:+.2f}, {summary[v]['errors']} errors")
    labels_by_v = {v: variants[v]["label"] for v in variants}
    for name in CURVES:
        n_epochs = max(len(h[name]) for h in histories.values())
        rows = [[e + 1] + [h[name][e] if e < len(h[name]) else "" for h in histories.values()] for e in range(n_epochs)]
        write_csv(plots / "curves" / f"{name.replace('/', '_')}.csv", ["epoch", *labels_by_v.values()], rows)
    write_csv(plots / "per_class_accuracy.csv", ["class", *labels_by_v.values()],
              [[dataset.classes[c], *(per_class[v][c] for v in variants)] for c in range(len(dataset.classes))])
    best = max(summary, key=lambda v: summary[v]["test_acc"])
    tight = min(summary, key=lambda v: summary[v]["gap"])
    loose = max(summary, key=lambda v: summary[v]["gap"])
    comparison = {
        "best_test_acc": summary[best]["label"], "best_test_acc_value": summary[best]["test_acc"],
        "smallest_gap": summary[tight]["label"], "smallest_gap_value": summary[tight]["gap"],
        "largest_gap": summary[loose]["label"], "largest_gap_value": summary[loose]["gap"],
    }
    write_json(metrics / "comparison.json", comparison)
    print(f"best test accuracy: {comparison['best_test_acc']}; least overfitting: {comparison['smallest_gap']}; "
          f"most overfitting: {comparison['largest_gap']}")


if __name__ == "__main__":
    cli.main(app, {"batch_size": "evaluate.batch_size", "device": "train.device"})
