"""Stage `train_<variant>`: train one normalization variant and save its weights and per-epoch log.

The three train stages run this one script; the variant named on the command line picks its entry of
`variants` in params.yaml, which sets its norm and what applies to that norm alone (see src/config.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from dvclive import Live
from src import cli, config, parallel
from src.checkpoint import file_md5, save_checkpoint
from src.data import DATASET_FILE, load_data
from src.engine import fit, make_model, pick_device
from src.files import atomic_dir, write_json
from src.model import count_parameters
from src.speed import plan

app = cli.app(__doc__.split("\n")[0])
TIMINGS = Path("timings")  # seconds per epoch and in all; git ignores it, as timings differ run to run


@app.command(epilog=cli.settings("model", "train", "variants.<name>"))
def main(
    variant: Annotated[str, typer.Argument(help="Variant to train: a key of `variants` in params.yaml.")],
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    model_out: Annotated[Path | None, typer.Option(help="Model file. [default: models/<variant>.pt]")] = None,
    live_dir: Annotated[Path | None, typer.Option(help="DVCLive folder. [default: dvclive/<variant>]")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per epoch.")] = True,
) -> None:
    """Train one variant of the CNN as params.yaml defines it; log every epoch with DVCLive; save the model.

    With train.processes = N > 1 it runs as N data-parallel processes on this machine; under torchrun, as the
    processes torchrun starts (docs/data_parallel.md)."""
    run = config.run(config.load(), variant)
    model_out, live_dir = model_out or Path(f"models/{variant}.pt"), live_dir or Path(f"dvclive/{variant}")
    dev = pick_device(run.compute.device, run.compute.threads, run.compute.precision)
    parallel.check_sync_bn(run.train.sync_bn, dev)
    args = [variant, "--data", str(data), "--model-out", str(model_out), "--live-dir", str(live_dir),
            "--progress" if progress else "--no-progress"]
    parallel.run(run.train.processes, dev, "src.train", args,
                 lambda dev, rank: train(run, data, model_out, live_dir, dev, progress, writes=rank == 0))


def train(run: config.Run, data: Path, model_out: Path, live_dir: Path, dev: torch.device, progress: bool,
          writes: bool) -> None:
    """Train `run` on `dev`; with `writes` (one process, or rank 0 of several), log, report and save the model.
    Only the writing process shows progress."""
    dataset = load_data(data)
    images = len(dataset.holdout(run.train.validation).train_images)  # refuses a hold-out as large as the data
    model = make_model(run.model, run.train.seed)
    how = plan(run.train.precision, run.model.norm, dev)
    threads = torch.get_num_threads() if dev.type == "cpu" else None
    split = f"{run.train.processes} processes x {run.train.batch_size // run.train.processes} images, " \
        if run.train.processes > 1 else ""
    if writes:
        print(f"{run.variant}: {run.model.norm.upper()} {'write-up ' if run.model.arch == 'writeup' else ''}model, "
              f"{count_parameters(model)} parameters, l1={run.train.l1}, device {dev} ({run.train.precision}: "
              f"{split}{how.describe()}{f', {threads} threads' if threads else ''}), {images} train / "
              f"{run.train.validation or len(dataset.test_images)} {run.train.split} images")
    if not writes:
        fit(model, dataset.to(dev), run.train, dev, progress=False)
        return
    # DVCLive logs to a temporary folder that replaces `live_dir` only when the stage succeeds.
    with atomic_dir(live_dir) as live_tmp:
        live = Live(str(live_tmp), dvcyaml=False, save_dvc_exp=False)

        def log(row: dict) -> None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
                live.log_metric(key.replace("_", "/"), row[key])
            live.next_step()

        start = time.perf_counter()
        history = fit(model, dataset.to(dev), run.train, dev, on_epoch=log, progress=progress)
        seconds = time.perf_counter() - start
        live.summary["params"] = count_parameters(model)
        live.end()  # only a finished run is summarized
        save_checkpoint(model_out, model, run.train, variant=run.variant, params=count_parameters(model),
                        device=str(dev), threads=threads, channels_last=how.layout.value, bf16=how.bf16,
                        data_md5=file_md5(data))
        write_json(TIMINGS / f"train_{run.variant}.json", {
            "train_seconds": round(seconds, 1),
            "epoch_seconds": [round(row["epoch_seconds"], 2) for row in history],
            "eval_seconds": [round(row["eval_seconds"], 2) for row in history],
        })
    print(f"{run.variant}: final {run.train.split} accuracy {history[-1]['test_acc']:.2f}% in {seconds:.0f}s -> "
          f"{model_out} (timings in {TIMINGS}/train_{run.variant}.json)")


if __name__ == "__main__":
    cli.main(app)
