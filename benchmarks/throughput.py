"""Training throughput: the project's tensor pipeline against the usual DataLoader + PIL one.

For each variant of `params.yaml` this times, in one process and alternating
round by round:

* baseline: the write-up's data path, `train.loader: torchvision` (src/loader.py:
  torchvision's own `MNIST.__getitem__`, PIL image, RandomRotation, ColorJitter,
  ToTensor, Normalize) through a `DataLoader` with batch size 64 and default
  workers, feeding the same model,
  optimizer and schedule (`src.engine.make_optimizer`) and update
  (`src.engine.train_step`: loss, L1 penalty, clipping) as the pipeline, in float32;
* the project: `src.engine.fit` itself, exactly as the train stages run it
  (tensors resident on the device, batched `src.augment.augment`), on a subset
  of `--steps` batches for one epoch, timed by the `epoch_seconds` it reports
  (training only, evaluation excluded), with `--precision` (params.yaml's
  `train.precision` by default): `exact` (float32, CPU kernels capped at AVX2,
  the same bits on every CPU) or `fast` (bf16 and layouts chosen per CPU).

The kernels' cap is set for the whole process before its first tensor operation,
so one run measures one precision, and the baseline runs on the same kernels;
`make bench` runs both precisions, one after the other.

Each measurement starts from a fresh model and skips `--warmup` steps first (a
short `fit` for the project). It also times evaluation on the test set
(`src.engine.predict` against a plain DataLoader loop) and records peak memory
(CUDA bytes allocated on a GPU, the process's resident set on the CPU). The
table at the end gives medians over `--rounds`; the ratio to the baseline is
taken within each round (the two measured seconds apart), and its median and
range over the rounds are printed, so that a shared machine's noise shows.

    python -m benchmarks.throughput                      # all variants, params.yaml's precision
    python -m benchmarks.throughput --variants gn --precision fast --rounds 5
    python -m benchmarks.throughput --profile            # also: where a step spends its time

With `--profile`, each variant also runs under `torch.profiler` and the share of
the step's time per operator group is printed (self time of the profiled ops:
convolutions, norms, pooling, ...).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from src import config
from src.config import ModelConfig, Precision, TrainConfig
from src.data import DATASET_FILE, Data, load_data
from src.engine import (
    NonFiniteLoss,
    fit,
    make_model,
    make_optimizer,
    physical_cores,
    pick_device,
    predict,
    train_step,
)
from src.errors import ConfigError, UserError, debug_enabled
from src.loader import torchvision_loader
from src.speed import plan

EPOCH_IMAGES = 60_000  # the per-epoch seconds are given for a full MNIST training set
BASELINE = "baseline"


# ----------------------------------------------------------------------------------------------------------------------
# The baseline: the write-up's DataLoader + PIL path (src/loader.py) and a plain training loop.


def _forever(loader: DataLoader) -> Iterator:
    """Batches of `loader`, starting a new shuffled epoch whenever one ends."""
    while True:
        yield from loader


def time_baseline(model_cfg: ModelConfig, cfg: TrainConfig, loader: DataLoader, device: torch.device,
                  steps: int, warmup: int) -> float:
    """Training images per second of the usual loop over `loader`, after `warmup` untimed steps."""
    model = make_model(model_cfg, cfg.seed).to(device)
    params = list(model.parameters())
    opt, sched = make_optimizer(params, cfg, warmup + steps)
    model.train()
    batches = _forever(loader)
    images, start = 0, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            images, start = 0, time.perf_counter()
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        train_step(model(x), y, params, opt, sched, cfg)  # the pipeline's loss and update
        images += len(x)
    _sync(device)
    return images / (time.perf_counter() - start)


def time_baseline_eval(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Evaluation images per second of the usual `no_grad` loop over a DataLoader of the test set."""
    model.eval()
    images, start = 0, time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model(x.to(device)).argmax(1)
            images += len(x)
    _sync(device)
    return images / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------------
# The project: src.engine.fit and src.engine.predict as the pipeline runs them.


def time_project(model_cfg: ModelConfig, cfg: TrainConfig, data: Data,
                 device: torch.device) -> tuple[float, torch.nn.Module]:
    """Training images per second of one `fit` epoch over `data` (on `device`), and the trained model."""
    model = make_model(model_cfg, cfg.seed)
    history = fit(model, data, cfg.changed(epochs=1), device, progress=False)
    steps = len(data.train_images) // cfg.batch_size
    return steps * cfg.batch_size / history[0]["epoch_seconds"], model


def time_predict(model: torch.nn.Module, data: Data, device: torch.device, n: int, batch_size: int) -> float:
    """Evaluation images per second of `predict` on the first `n` test images (already on `device`).

    As in the pipeline: in float32 whatever the training precision, in the memory format `predict` picks.
    """
    images = data.test_images[:n]
    _sync(device)
    start = time.perf_counter()
    predict(model, images, data.mean, data.std, batch_size)
    _sync(device)
    return len(images) / (time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------------------
# Measuring.


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory while the `with` block runs, in bytes (`.peak`).

    On a GPU: `torch.cuda.max_memory_allocated`, reset on entry. On the CPU: the process's resident set,
    sampled by a background thread (it includes the interpreter, the libraries and the dataset).
    """

    def __init__(self, device: torch.device, interval: float = 0.01) -> None:
        self.device, self.interval, self.peak = device, interval, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._process = psutil.Process()
            self.peak = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._process.memory_info().rss)


@dataclass
class Runs:
    """Every round's measurements of one pipeline (the baseline or one mode) of one variant."""

    train: list[float] = field(default_factory=list)  # images per second
    eval: list[float] = field(default_factory=list)  # images per second
    memory: list[int] = field(default_factory=list)  # peak bytes while training
    error: str | None = None  # why this mode could not run (it is then left out of later rounds)


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_variant(variant: str, model_cfg: ModelConfig, cfg: TrainConfig, data: Data, device: torch.device,
                  args: argparse.Namespace) -> dict[str, Runs]:
    """All rounds of one variant: the baseline and each mode, alternating, in a rotating order."""
    train_loader = torchvision_loader(data.train_images, data.train_labels, cfg, batch_size=args.baseline_batch_size)
    test_loader = torchvision_loader(data.test_images[: args.eval_images], data.test_labels[: args.eval_images], cfg,
                                     train=False, batch_size=args.eval_batch_size)

    # fit over a subset of whole batches: one epoch = the timed steps (n_test only keeps its evaluation short).
    n_test = min(cfg.batch_size, len(data.test_images))
    fit_data = data.subset(n_train=args.steps * cfg.batch_size, n_test=n_test)
    configs = {cfg.precision: cfg}

    runs = {name: Runs() for name in [BASELINE, *configs]}

    def failed(name: str, e: Exception) -> None:
        """A mode the project's code cannot run: report it in the table instead of stopping the benchmark."""
        if debug_enabled():
            raise e
        runs[name].error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        print(f"  {variant} {name}: failed ({runs[name].error})", flush=True)

    # Warm-up of the project's path in every mode: allocator, kernels, autocast caches.
    warm_data = data.subset(n_train=max(args.warmup, 1) * cfg.batch_size, n_test=n_test)
    for name, mode_cfg in configs.items():
        try:
            _, model = time_project(model_cfg, mode_cfg, warm_data, device)
        except (RuntimeError, NonFiniteLoss) as e:
            failed(name, e)
            continue
        if args.eval_images:
            time_predict(model, data, device, min(args.eval_images, args.eval_batch_size),
                         args.eval_batch_size)

    order = [name for name, r in runs.items() if not r.error]
    for r in range(args.rounds):
        shift = r % len(order)
        for name in order[shift:] + order[:shift]:
            if runs[name].error:
                continue
            with PeakMemory(device) as mem:
                if name == BASELINE:
                    train = time_baseline(model_cfg, cfg, train_loader, device, args.steps, args.warmup)
                else:
                    try:
                        train, model = time_project(model_cfg, configs[name], fit_data, device)
                    except (RuntimeError, NonFiniteLoss) as e:
                        failed(name, e)
                        continue
            runs[name].train.append(train)
            runs[name].memory.append(mem.peak)
            if args.eval_images:
                if name == BASELINE:
                    model = make_model(model_cfg, cfg.seed).to(device)
                    runs[name].eval.append(time_baseline_eval(model, test_loader, device))
                else:
                    runs[name].eval.append(time_predict(model, data, device, args.eval_images,
                                                        args.eval_batch_size))
        base = runs[BASELINE].train[-1]
        parts = [f"{name} {m.train[-1]:,.0f}" + ("" if name == BASELINE else f" ({m.train[-1] / base:.2f}x)")
                 for name, m in runs.items() if not m.error]
        print(f"  {variant} round {r + 1}/{args.rounds}: img/s " + " | ".join(parts), flush=True)
    return runs


# ----------------------------------------------------------------------------------------------------------------------
# Report.


# Operator groups of the profile: the first group whose pattern is in an op's name takes its time.
OP_GROUPS = {
    "convolution backward": ("convolution_backward",),
    "convolution forward": ("convolution", "conv2d"),
    "norm backward": ("batch_norm_backward", "group_norm_backward", "batch_norm_update"),
    "norm forward": ("batch_norm", "group_norm"),
    "max-pool": ("max_pool", "PlanesAsChannels"),  # with src.speed.MaxPool2x2's autograd function
    "ReLU": ("threshold_backward", "relu", "clamp_min"),
    "copies and casts": ("copy_", "_to_copy", "contiguous"),
    "optimizer": ("SGD", "_foreach", "clip_grad", "linalg_vector_norm"),
    "augmentation": ("grid_sampler", "affine_grid", "bmm"),  # affine_grid's matrix product is a bmm
    "weight standardization": ("var_mean", "rsqrt"),
}


def profile_step(model_cfg: ModelConfig, cfg: TrainConfig, data: Data, device: torch.device) -> dict[str, float]:
    """Share (%) of the profiled self time per `OP_GROUPS` group (plus "other") in one short `fit` epoch."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto's own log lines (and, from a CUDA build on a machine without a GPU, an ERROR line about the GPU count)
    # would land in the middle of the table.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    time_project(model_cfg, cfg, data, device)  # warm up the kernels and the allocator
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        time_project(model_cfg, cfg, data, device)
    shares = dict.fromkeys([*OP_GROUPS, "other"], 0.0)
    for event in prof.key_averages():
        if event.key.startswith("ProfilerStep") or event.key in ("aten::empty", "aten::empty_strided"):
            continue
        group = next((g for g, patterns in OP_GROUPS.items() if any(p in event.key for p in patterns)), "other")
        shares[group] += event.self_cpu_time_total + getattr(event, "self_device_time_total", 0)
    total = sum(shares.values()) or 1.0
    return {g: 100 * t / total for g, t in shares.items()}


def format_profile(variant: str, mode: str, shares: dict[str, float]) -> str:
    parts = ", ".join(f"{g} {s:.0f}%" for g, s in sorted(shares.items(), key=lambda kv: -kv[1]) if s >= 0.5)
    return f"  {variant} {mode}: {parts}"


def summarize(variant: str, runs: dict[str, Runs], cfg: TrainConfig, baseline_batch: int,
              resolved: str = "") -> list[dict]:
    """One row per pipeline: medians over the rounds, and the ratio against the baseline (the median and range of
    each round's ratio). `resolved` says what the project's precision runs on this device."""
    rows = []
    for name, r in runs.items():
        train = _median(r.train)
        # Round by round (a pipeline that failed has only its first rounds, which pair with the baseline's first).
        ratios = [t / b for t, b in zip(r.train, runs[BASELINE].train)]
        rows.append({
            "variant": variant,
            "mode": name,
            "resolved": "" if name == BASELINE else resolved,
            "batch_size": baseline_batch if name == BASELINE else cfg.batch_size,
            "train_img_s": train,
            "ratio": _median(ratios),
            "ratio_range": (min(ratios), max(ratios)) if ratios else (float("nan"), float("nan")),
            "epoch_seconds": EPOCH_IMAGES / train,
            "eval_img_s": _median(r.eval),
            "peak_mib": max(r.memory, default=float("nan")) / 2**20,
            "error": r.error,
        })
    return rows


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value else format(value, spec)  # NaN -> "-"


def format_table(rows: list[dict], device: torch.device) -> str:
    memory = "peak CUDA MiB" if device.type == "cuda" else "peak RSS MiB"
    header = ["variant", "pipeline", "batch", "train img/s", "x baseline", "(range)", "s/epoch (60k)",
              "eval img/s", memory]
    body = []
    for row in rows:
        pipeline = "DataLoader+PIL" if row["mode"] == BASELINE else f"project {row['mode']}"
        if row["resolved"]:
            pipeline += f" ({row['resolved']})"
        train = "failed*" if row["error"] else _fmt(row["train_img_s"], ",.0f")
        low, high = row["ratio_range"]
        spread = "" if row["mode"] == BASELINE or low != low else f"{low:.2f}-{high:.2f}"
        body.append([row["variant"], pipeline, str(row["batch_size"]), train,
                     _fmt(row["ratio"], ".2f"), spread, _fmt(row["epoch_seconds"], ".1f"),
                     _fmt(row["eval_img_s"], ",.0f"), _fmt(row["peak_mib"], ",.0f")])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded)

    out = [line(header), line(["-" * w for w in widths])]
    for i, cells in enumerate(body):
        if i and cells[0] != body[i - 1][0]:
            out.append("")
        out.append(line(cells))
    notes = [f"* {row['variant']} {row['mode']}: {row['error']}" for row in rows if row["error"]]
    return "\n".join(out + ([""] if notes else []) + notes)


def busy_cores(seconds: float = 1.0) -> float:
    """Cores other processes keep busy: system-wide CPU use over `seconds` while this process sleeps."""
    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({cpu}, {torch.get_num_threads()} torch threads, {physical_cores()} physical cores)"


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps before each measurement")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each times every pipeline once")
    p.add_argument("--variants", type=_csv, default=None, help="comma-separated keys of params.yaml `variants` "
                   "[default: all]")
    p.add_argument("--precision", type=str, default=None, help="the project's train.precision: exact or fast "
                   "[default: params.yaml's]")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads [default: the pipeline's train.threads, "
                   "less the cores other processes keep busy at the start]")
    p.add_argument("--data", type=Path, default=DATASET_FILE, help="dataset file written by the download stage")
    p.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="the pipeline's settings")
    p.add_argument("--baseline-batch-size", type=int, default=64, help="batch size of the DataLoader baseline")
    p.add_argument("--eval-images", type=int, default=None, help="test images to time evaluation on; 0 skips it "
                   "[default: the whole test set]")
    p.add_argument("--eval-batch-size", type=int, default=None, help="[default: params.yaml evaluate.batch_size]")
    p.add_argument("--profile", action="store_true", help="also print each variant's share of step time per "
                   "operator group (torch.profiler)")
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "baseline_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    if args.precision is not None and args.precision not in {m.value for m in Precision}:
        p.error(f"--precision: unknown {args.precision!r}; choose exact or fast")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark, print per-round lines and the final table; return the table's rows."""
    args = parse_args(argv)
    params = config.load(args.params)
    runs_of = {v: config.run(params, v) for v in args.variants or config.get_key(params, "variants")}
    variants = list(runs_of)
    if args.eval_batch_size is None:
        args.eval_batch_size = config.section(params, "evaluate", config.Evaluate).batch_size

    compute = config.compute(params)
    precision = Precision(args.precision or compute.precision)
    # As the pipeline: params.yaml's thread count, and with `exact` the CPU kernels capped before any tensor work.
    device = pick_device(args.device, compute.threads, precision)
    busy, pipeline_threads = 0.0, torch.get_num_threads()
    if device.type == "cpu":
        busy = busy_cores()
        threads = args.threads or max(1, min(torch.get_num_threads(), round(physical_cores() - busy)))
        torch.set_num_threads(threads)
    data = load_data(args.data)
    args.eval_images = len(data.test_images) if args.eval_images is None else min(args.eval_images,
                                                                                  len(data.test_images))
    batch_size = runs_of[variants[0]].train.batch_size
    if args.steps * batch_size > len(data.train_images):
        raise ConfigError(f"--steps {args.steps} x batch size {batch_size} exceeds the "
                          f"{len(data.train_images)} training images of {args.data}")
    data = data.to(device)

    print(f"device {_describe(device)}, torch {torch.__version__}")
    print(f"{args.steps} timed steps after {args.warmup} warm-up steps, {args.rounds} rounds; baseline batch "
          f"{args.baseline_batch_size} (DataLoader, num_workers=0, float32), project batch {batch_size} "
          f"(src.engine.fit, train.precision={precision.value}); evaluation on {args.eval_images} test images")
    if device.type == "cpu" and busy >= 0.5:
        print(f"note: other processes kept {busy:.1f} of {physical_cores()} cores busy at the start, so absolute "
              "numbers are low; ratios measured in this same run still compare")
        if not args.threads and torch.get_num_threads() < pipeline_threads:
            print(f"note: using {torch.get_num_threads()} torch thread(s), not the pipeline's {pipeline_threads}: "
                  "more threads than free cores stall torch's parallel loops (pass --threads to choose)")
    print(flush=True)

    rows = []
    start = time.perf_counter()
    for variant in variants:
        model_cfg, cfg = runs_of[variant].model, runs_of[variant].train.changed(precision=precision)
        runs = bench_variant(variant, model_cfg, cfg, data, device, args)
        resolved = plan(precision, model_cfg.norm, device).describe()
        rows += summarize(variant, runs, cfg, args.baseline_batch_size, resolved)

    print(f"\nmedians over {args.rounds} round(s); x baseline = train img/s / DataLoader+PIL train img/s of the same "
          f"round (median, and range over the rounds); "
          f"s/epoch = {EPOCH_IMAGES:,} training images at that rate\n")
    print(format_table(rows, device))
    if args.profile:
        print(f"\nshare of a training step's time per operator group (torch.profiler, {args.steps} steps):")
        for variant in variants:
            model_cfg, cfg = runs_of[variant].model, runs_of[variant].train.changed(precision=precision)
            n_test = min(cfg.batch_size, len(data.test_images))
            fit_data = data.subset(n_train=args.steps * cfg.batch_size, n_test=n_test)
            resolved = plan(precision, model_cfg.norm, device).describe()
            print(format_profile(variant, f"{precision.value} ({resolved})",
                                 profile_step(model_cfg, cfg, fit_data, device)), flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"\nprocess peak RSS {rss:,.0f} MiB; total {time.perf_counter() - start:.0f}s", flush=True)
    return rows


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point: one-line errors instead of tracebacks (NORMCMP_DEBUG=1 shows them)."""
    try:
        main(argv)
        return 0
    except (ConfigError, UserError) as e:
        if debug_enabled():
            raise
        (e if isinstance(e, UserError) else UserError(str(e))).show()
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
