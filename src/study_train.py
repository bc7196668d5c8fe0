"""Stage `train@<variant>-<batch>-<seed>` of the batch-size study (studies/batch_size/dvc.yaml): one point.

Trains a variant exactly as params.yaml defines it for the main pipeline (same
network, recipe and augmentation) at another batch size B, with the learning
rate scaled linearly from the main recipe's (train.lr x B / train.batch_size)
and the same number of epochs at every batch size (`batch_study`), on the first
`batch_study.train_images` training images; then scores the whole test set
(BatchNorm in eval mode, with its running statistics) and writes one JSON file.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from src import cli, config
from src.data import DATASET_FILE, load_data
from src.engine import fit, make_model, pick_device
from src.errors import UserError
from src.files import write_json

app = cli.app(__doc__.split("\n")[0])


def study_run(params: dict, variant: str, batch_size: int, seed: int) -> config.Run:
    """One point's run: the variant's, at `batch_size` with the scaled rate, the study's epochs and `seed`."""
    run = config.run(params, variant)
    study = config.section(params, "batch_study", config.BatchStudy)
    lr = run.train.lr * batch_size / run.train.batch_size
    return replace(run, train=run.train.changed(batch_size=batch_size, lr=lr, seed=seed, epochs=study.epochs))


@app.command(epilog=cli.settings("batch_study"))
def main(
    variant: Annotated[str, typer.Argument(help="A key of `variants` in params.yaml.")],
    batch_size: Annotated[int, typer.Option(help="Images per step; the learning rate scales with it.")],
    seed: Annotated[int, typer.Option(help="Seed for initialization, order and augmentation.")],
    out: Annotated[Path, typer.Option(help="Result file (JSON).")],
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per epoch.")] = False,
) -> None:
    """Train one variant at one batch size and seed; write its final test scores."""
    params = config.load()
    run = study_run(params, variant, batch_size, seed)
    n = config.section(params, "batch_study", config.BatchStudy).train_images
    dev = pick_device(run.compute.device, run.compute.threads, run.compute.precision)
    dataset = load_data(data)
    if n > len(dataset.train_images):
        raise UserError(f"batch_study.train_images = {n} must be in 1..{len(dataset.train_images)}",
                        hint="the number of training images of every point of the study")
    dataset = dataset.subset(n_train=n).to(dev)
    start = time.perf_counter()
    last = fit(make_model(run.model, seed), dataset, run.train, dev, progress=progress)[-1]
    seconds = time.perf_counter() - start
    result = {
        "variant": variant, "label": run.label, "batch_size": batch_size, "seed": seed, "lr": run.train.lr,
        "epochs": run.train.epochs, "train_images": n, "split": run.train.split,
        "test_acc": round(last["test_acc"], 4), "test_error": round(100 - last["test_acc"], 4),
        "test_loss": round(last["test_loss"], 6), "train_acc": round(last["train_acc"], 4),
    }  # no timing: the same run gives the same file
    write_json(out, result)
    print(f"{run.label}, batch {batch_size}, lr {run.train.lr:.5g}, seed {seed}: test error "
          f"{result['test_error']:.2f}% in {seconds:.0f}s -> {out}")


if __name__ == "__main__":
    cli.main(app)
