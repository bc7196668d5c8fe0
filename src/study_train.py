"""Stage `train@<images>-<seed>` or `ddp@<variant>-<seed>` of the per-device study (studies/per_device/dvc.yaml).

Trains a variant exactly as params.yaml defines it for the main pipeline (network, recipe, data, 20 epochs at
batch 128) but for how BatchNorm's statistics are split: `--images b` in one process, with the variant's
`bn_images` set to b (what 128 / b devices with local BatchNorm compute), or `--processes N` as N real
data-parallel processes. Then scores the test set (BatchNorm with its running statistics) and writes one JSON file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from src import cli, config, parallel
from src.data import DATASET_FILE, load_data
from src.engine import fit, make_model, pick_device
from src.errors import UserError
from src.files import write_json

app = cli.app(__doc__.split("\n")[0])


def study_run(params: dict, variant: str, seed: int, images: int = 0, processes: int = 1,
              threads: int | None = None) -> config.Run:
    """One point's run: the variant's with `seed`, its BatchNorm statistics over groups of `images` images (0: the
    whole batch of each process) and `processes` data-parallel processes of `threads` CPU threads each (default:
    train.threads)."""
    spec = config.variant(params, variant)
    if images and spec.norm != config.Norm.bn:
        raise UserError(f"per_device: --images applies to a BatchNorm variant; {variant} is {spec.norm}",
                        hint="set per_device.variant to a variant of norm bn")
    changed = {**params, "variants": {**params["variants"], variant: {**params["variants"][variant],
                                                                      **({"bn_images": images} if images else {})}},
               "train": {**params["train"], "seed": seed, "processes": processes,
                         **({"threads": threads} if threads else {})}}
    return config.run(changed, variant)


def point(run: config.Run, data: Path, out: Path, dev: torch.device, rank: int, progress: bool) -> None:
    """Train `run` and, in the writing process, save its final scores to `out`."""
    dataset = load_data(data).to(dev)
    start = time.perf_counter()
    last = fit(make_model(run.model, run.train.seed), dataset, run.train, dev, progress=progress)[-1]
    if rank:
        return
    share = run.train.batch_size // run.train.processes
    result = {
        "variant": run.variant, "label": run.label, "images": run.model.bn_images or share,
        "processes": run.train.processes, "seed": run.train.seed, "epochs": run.train.epochs,
        "batch_size": run.train.batch_size, "split": run.train.split,
        "test_acc": round(last["test_acc"], 4), "test_error": round(100 - last["test_acc"], 4),
        "test_loss": round(last["test_loss"], 6), "train_acc": round(last["train_acc"], 4),
    }  # no timing: the same run gives the same file
    write_json(out, result)
    how = f"{run.train.processes} DDP processes" if run.train.processes > 1 else "one process"
    print(f"{run.label}, {result['images']} images per device ({how}), seed {run.train.seed}: test error "
          f"{result['test_error']:.2f}% in {time.perf_counter() - start:.0f}s -> {out}")


@app.command(epilog=cli.settings("per_device"))
def main(
    variant: Annotated[str, typer.Argument(help="A key of `variants` in params.yaml.")],
    seed: Annotated[int, typer.Option(help="Seed for initialization, order and augmentation.")],
    out: Annotated[Path, typer.Option(help="Result file (JSON).")],
    images: Annotated[int, typer.Option(help="Images per BatchNorm group, in one process (0: the whole batch).")] = 0,
    processes: Annotated[int, typer.Option(help="Data-parallel processes (DDP).")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads per process. [default: train.threads]")] = None,
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per epoch.")] = False,
) -> None:
    """Train one variant with its BatchNorm statistics split one way; write its final test scores."""
    run = study_run(config.load(), variant, seed, images, processes, threads)
    dev = pick_device(run.compute.device, run.compute.threads, run.compute.precision)
    args = [variant, "--seed", str(seed), "--out", str(out), "--images", str(images), "--processes", str(processes),
            *(["--threads", str(threads)] if threads else []), "--data", str(data), "--progress" if progress else "--no-progress"]
    parallel.run(processes, dev, "src.study_train", args,
                 lambda dev, rank: point(run, data, out, dev, rank, progress and rank == 0))


if __name__ == "__main__":
    cli.main(app)
