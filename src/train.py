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
from src import cli, config
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
    """Train one variant of the CNN as params.yaml defines it; log every epoch with DVCLive; save the model."""
    run = config.run(config.load(), variant)
    model_out, live_dir = model_out or Path(f"models/{variant}.pt"), live_dir or Path(f"dvclive/{variant}")
    dev = pick_device(run.compute.device, run.compute.threads, run.compute.precision)
    dataset = load_data(data)
    images = len(dataset.holdout(run.train.validation).train_images)  # refuses a hold-out as large as the data
    model = make_model(run.model, run.train.seed)
    how = plan(run.train.precision, run.model.norm, dev)
    threads = torch.get_num_threads() if dev.type == "cpu" else None
    print(f"{variant}: {run.model.norm.upper()} {'write-up ' if run.model.arch == 'writeup' else ''}model, "
          f"{count_parameters(model)} parameters, l1={run.train.l1}, device {dev} ({run.train.precision}: "
          f"{how.describe()}{f', {threads} threads' if threads else ''}), {images} train / "
          f"{run.train.validation or len(dataset.test_images)} {run.train.split} images")
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
        save_checkpoint(model_out, model, run.train, variant=variant, params=count_parameters(model),
                        device=str(dev), threads=threads, channels_last=how.layout.value, bf16=how.bf16,
                        data_md5=file_md5(data))
        write_json(TIMINGS / f"train_{variant}.json", {
            "train_seconds": round(seconds, 1),
            "epoch_seconds": [round(row["epoch_seconds"], 2) for row in history],
            "eval_seconds": [round(row["eval_seconds"], 2) for row in history],
        })
    print(f"{variant}: final {run.train.split} accuracy {history[-1]['test_acc']:.2f}% in {seconds:.0f}s -> "
          f"{model_out} (timings in {TIMINGS}/train_{variant}.json)")


if __name__ == "__main__":
    cli.main(app)
