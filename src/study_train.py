"""Stage `train@<variant>-<batch>-<seed>` of the batch-size study (studies/batch_size/dvc.yaml): one point.

Trains a variant exactly as params.yaml defines it for the main pipeline (same
network, recipe and augmentation) at another batch size B, with the learning
rate scaled linearly from the main recipe's (train.lr x B / train.batch_size)
and the same number of epochs at every batch size (`batch_study`), on the first
`batch_study.train_images` training images; then scores the whole test set
(BatchNorm in eval mode, with its running statistics) and writes one JSON file.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from src import cli
from src.data import DATASET_FILE, load_data
from src.engine import fit, make_model, pick_device
from src.errors import UserError
from src.files import atomic_path
from src.params import get_key, load_params
from src.train import variant_configs

app = cli.app(__doc__.split("\n")[0])
KEYS = {"epochs": "batch_study.epochs", "train_images": "batch_study.train_images",
        "device": "train.device", "threads": "train.threads"}


def study_point(params: dict, variant: str, batch_size: int, seed: int, epochs: int, train_images: int):
    """The model and training configs of one point: the variant's, at `batch_size` with the scaled rate."""
    model_cfg, cfg = variant_configs(params, variant)
    lr = cfg.lr * batch_size / cfg.batch_size
    return model_cfg, replace(cfg, batch_size=batch_size, lr=lr, seed=seed, epochs=epochs), train_images


@app.command()
def main(
    variant: Annotated[str, typer.Argument(help="A key of `variants` in params.yaml.")],
    batch_size: Annotated[int, typer.Option(help="Images per step; the learning rate scales with it.")],
    seed: Annotated[int, typer.Option(help="Seed for initialization, order and augmentation.")],
    out: Annotated[Path, typer.Option(help="Result file (JSON).")],
    epochs: Annotated[int, typer.Option(help="Epochs, the same at every batch size.")],
    train_images: Annotated[int, typer.Option(help="Train on the first N training images.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")],
    threads: Annotated[str, typer.Option(help="CPU threads: auto or N.")],
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per epoch.")] = False,
) -> None:
    """Train one variant at one batch size and seed; write its final test scores."""
    params = load_params()
    if variant not in get_key(params, "variants"):
        raise UserError(f"unknown variant {variant!r}; params.yaml variants are: "
                        f"{', '.join(get_key(params, 'variants'))}")
    model_cfg, cfg, n = study_point(params, variant, batch_size, seed, epochs, train_images)
    dev = pick_device(device, threads, cfg.precision)
    dataset = load_data(data)
    if not 0 < n <= len(dataset.train_images):
        raise UserError(f"batch_study.train_images = {n} must be in 1..{len(dataset.train_images)}",
                        hint="the number of training images of every point of the study")
    dataset = dataset.subset(n_train=n).to(dev)
    start = time.perf_counter()
    history = fit(make_model(model_cfg, seed), dataset, cfg, dev, progress=progress)
    seconds = time.perf_counter() - start
    last = history[-1]
    label = get_key(params, f"variants.{variant}").get("label", variant)
    result = {
        "variant": variant, "label": label, "batch_size": batch_size, "seed": seed, "lr": cfg.lr,
        "epochs": epochs, "train_images": n, "split": cfg.split, "test_acc": round(last["test_acc"], 4),
        "test_error": round(100 - last["test_acc"], 4), "test_loss": round(last["test_loss"], 6),
        "train_acc": round(last["train_acc"], 4),
    }  # no timing: the same run gives the same file
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{label}, batch {batch_size}, lr {cfg.lr:.5g}, seed {seed}: test error {result['test_error']:.2f}% "
          f"in {seconds:.0f}s -> {out}")


if __name__ == "__main__":
    cli.main(app, KEYS)
