"""Stage `train_<variant>`: train one normalization variant and save its weights and per-epoch log.

The three train stages run this one script; they differ only in the variant
named on the command line, whose norm and L1 factor come from `params.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from src import cli
from src.checkpoint import save_checkpoint
from src.data import DATASET_FILE, load_data
from src.engine import Precision, TrainConfig, check_l1, describe_path, fit, make_model, pick_device, resolve_fast_path
from src.errors import ConfigError, UserError
from src.files import atomic_dir, write_json
from src.model import Arch, ModelConfig, Norm, count_parameters
from src.params import get_key, load_params

app = cli.app(__doc__.split("\n")[0])
TIMINGS = Path("timings")  # seconds per epoch and in all, for reading only

# The config fields that params.yaml's `model` and `train` sections set: all but the variant's own norm and L1.
MODEL_FIELDS = [f.name for f in fields(ModelConfig) if f.name != "norm"]
TRAIN_FIELDS = [f.name for f in fields(TrainConfig) if f.name != "l1"]
# The settings of those sections: the config fields plus where and how to run.
SETTINGS = {"model": MODEL_FIELDS, "train": TRAIN_FIELDS + ["device", "threads"]}
# Options read from params.yaml (each setting is an option of the same name): option name -> key.
KEYS = {name: f"{section}.{name}" for section, names in SETTINGS.items() for name in names}


def _variant_defaults(ctx: typer.Context, variant: str) -> str:
    """Eager callback: the variant's norm and L1 factor become the defaults of --norm and --l1."""
    if ctx.resilient_parsing:
        return variant
    params = load_params()
    check_settings(params)
    variants = get_key(params, "variants")
    if variant not in variants:
        raise UserError(f"unknown variant {variant!r}; params.yaml variants are: {', '.join(variants)}")
    ctx.default_map = {**(ctx.default_map or {}),
                       "norm": get_key(variants, f"{variant}.norm"), "l1": get_key(variants, f"{variant}.l1")}
    return variant


def make_configs(norm: str, l1: float, settings: Mapping[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """One variant's model and training configs: its norm and L1 factor plus the shared `settings` (the keys of
    params.yaml's `model` and `train` sections, or the stage's options of the same names); other keys, such as
    the device, the thread count and file paths, are not part of the configs and are left out."""
    check_l1(norm, l1)
    model = {k: settings[k] for k in MODEL_FIELDS if k in settings}
    train = {k: settings[k] for k in TRAIN_FIELDS if k in settings}
    return ModelConfig(norm=norm, **model), TrainConfig(l1=l1, **train)


def check_settings(params: Mapping[str, Any]) -> None:
    """A clear error for a key of params.yaml's `model` or `train` section that no setting reads (a typo would
    otherwise leave the default in force unnoticed)."""
    for section, known in SETTINGS.items():
        for key in get_key(params, section):
            if key not in known:
                raise UserError(f"params.yaml: unknown key '{section}.{key}'",
                                hint=f"the {section} settings are: {', '.join(sorted(known))}")


def variant_configs(params: dict, variant: str) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of `variant` exactly as `params.yaml` defines them."""
    check_settings(params)
    spec = get_key(params, f"variants.{variant}")
    return make_configs(spec["norm"], spec["l1"], {**get_key(params, "model"), **get_key(params, "train")})


@app.command()
def main(
    ctx: typer.Context,
    variant: Annotated[str, typer.Argument(help="Variant to train: a key of `variants` in params.yaml.",
                                           is_eager=True, callback=_variant_defaults)],
    norm: Annotated[str, typer.Option(help="Normalization: bn, gn or ln. [default: variants.<variant>.norm]")],
    l1: Annotated[float, typer.Option(help="L1 factor, BN only. [default: variants.<variant>.l1]")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")],
    batch_size: Annotated[int, typer.Option(help="Images per optimizer step.")],
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule.")],
    momentum: Annotated[float, typer.Option(help="SGD momentum (the peak, with --cycle-momentum).")],
    nesterov: Annotated[bool, typer.Option(help="Nesterov momentum.")],
    cycle_momentum: Annotated[bool, typer.Option(help="Cycle the momentum inversely to the learning rate, "
                                                      "between 0.85 and --momentum.")],
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")],
    pct_start: Annotated[float, typer.Option(help="Fraction of steps warming up to the peak rate.")],
    seed: Annotated[int, typer.Option(help="Seed for initialization, order and augmentation.")],
    rotation: Annotated[float, typer.Option(help="Random rotation range, +- degrees.")],
    brightness: Annotated[float, typer.Option(help="Brightness jitter, +- fraction.")],
    contrast: Annotated[float, typer.Option(help="Contrast jitter, +- fraction.")],
    l1_tensor_mean: Annotated[bool, typer.Option(help="L1 term: the sum of each weight tensor's mean |w| "
                                                      "(the write-up's form) instead of the sum of all |w|.")],
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the cross-entropy loss.")],
    grad_clip: Annotated[float, typer.Option(help="Clip the gradients' global norm to this (0: off).")],
    validation: Annotated[int, typer.Option(help="Hold out the last N training images and score them instead of "
                                                 "the test set (0: off).")],
    precision: Annotated[Precision, typer.Option(help="exact: float32, the same bits on every x86-64 CPU; fast: "
                                                    "bfloat16 and layouts per CPU (faster, CPU-dependent results).")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")],
    threads: Annotated[str, typer.Option(help="CPU threads: N, or auto (OMP_NUM_THREADS, else one per physical "
                                              "core); the count is part of the result.")],
    arch: Annotated[Arch, typer.Option(help="Network: default (this project's) or writeup (the yardstick, "
                                            "whose fixed shape ignores the five options below).")],
    width: Annotated[int, typer.Option(help="Channels of the wide convolutions.")],
    gn_groups: Annotated[int, typer.Option(help="Groups of GroupNorm (gn only).")],
    dropout: Annotated[float, typer.Option(help="Dropout2d rate after each block.")],
    weight_std: Annotated[bool, typer.Option(help="Weight standardization of the convolutions.")],
    relu_before_norm: Annotated[bool, typer.Option(help="ReLU before the norm in each block (the write-up's "
                                                        "order) instead of after it.")],
    data: Annotated[Path, typer.Option(help="Dataset file from the download stage.")] = DATASET_FILE,
    model_out: Annotated[Path | None, typer.Option(help="Model file. [default: models/<variant>.pt]")] = None,
    live_dir: Annotated[Path | None, typer.Option(help="DVCLive folder. [default: dvclive/<variant>]")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar per epoch.")] = True,
) -> None:
    """Train one variant of the CNN; log every epoch with DVCLive; save the model."""
    model_out = model_out or Path(f"models/{variant}.pt")
    live_dir = live_dir or Path(f"dvclive/{variant}")
    if norm not in {n.value for n in Norm}:
        raise ConfigError(f"variants.{variant}.norm = {norm!r} is unknown; choose bn, gn or ln")
    model_cfg, cfg = make_configs(norm, l1, ctx.params)  # the options named like config fields, by name
    dev = pick_device(device, threads, cfg.precision)
    dataset = load_data(data).to(dev)
    model = make_model(model_cfg, seed)
    n_params = count_parameters(model)
    layout, fast_bf16 = resolve_fast_path(cfg.precision, norm, dev)
    cpu_threads = torch.get_num_threads() if dev.type == "cpu" else None
    network = "write-up model" if model_cfg.arch == Arch.writeup else "model"
    print(f"{variant}: {norm.upper()} {network}, {n_params} parameters, l1={l1}, device {dev} "
          f"({cfg.precision.value}: {describe_path(layout, fast_bf16)}"
          f"{f', {cpu_threads} threads' if cpu_threads else ''}), "
          f"{len(dataset.train_images) - cfg.validation} train / "
          f"{cfg.validation or len(dataset.test_images)} {cfg.split} images")

    from dvclive import Live

    # DVCLive logs to a temporary folder that replaces `live_dir` only when the stage succeeds: DVC leaves the
    # previous log in place while the stage runs (`persist: true`), and `Live` would empty the folder it is given.
    with atomic_dir(live_dir) as live_tmp:
        live = Live(str(live_tmp), dvcyaml=False, save_dvc_exp=False)

        def log(row: dict) -> None:
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                live.log_metric(key.replace("_", "/"), row[key])
            live.log_metric("lr", row["lr"])
            live.next_step()

        start = time.perf_counter()
        history = fit(model, dataset, cfg, dev, on_epoch=log, progress=progress)
        seconds = time.perf_counter() - start
        live.summary["params"] = n_params
        live.end()  # only a finished run is summarized
        # Only what rebuilds the model and says how it was trained: the same training gives the same file.
        save_checkpoint(model_out, model, cfg, variant=variant, params=n_params,
                        device=str(dev), threads=cpu_threads, channels_last=layout.value, bf16=fast_bf16)
        # Timings differ run to run, so they stay out of every tracked output (git ignores TIMINGS, no stage has it).
        write_json(TIMINGS / f"train_{variant}.json", {
            "train_seconds": round(seconds, 1),
            "epoch_seconds": [round(row["epoch_seconds"], 2) for row in history],
            "eval_seconds": [round(row["eval_seconds"], 2) for row in history],
        })
    print(f"{variant}: final {cfg.split} accuracy {history[-1]['test_acc']:.2f}% in {seconds:.0f}s -> {model_out} "
          f"(timings in {TIMINGS}/train_{variant}.json)")


if __name__ == "__main__":
    cli.main(app, KEYS)
